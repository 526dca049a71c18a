//! Run-time kernel dispatch (to be written).
