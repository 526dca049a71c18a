//! q4_0 (to be written).
