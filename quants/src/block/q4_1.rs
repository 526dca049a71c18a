//! q4_1 (to be written).
