//! Checked byte-level API (to be written).
