//! float (to be written).
