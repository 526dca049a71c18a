//! q5_1 (to be written).
