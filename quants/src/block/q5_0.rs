//! q5_0 (to be written).
