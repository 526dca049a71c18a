//! q8_0 (to be written).
