//! Bytes in, typed views out: GGUF (v2/v3) and safetensors readers, and a streaming, atomic GGUF writer.
//!
//! Everything read from a file is treated as hostile. Each reader validates the whole header once, at
//! open time, with checked arithmetic against both the bytes that remain and the configured [`Limits`],
//! before anything is allocated from a count found in the file. After a successful open, tensor data is
//! handed out as plain borrowed slices of a memory map that cannot fail.
//!
//! `unsafe` code is confined to the `mmap` module (the memory mapping itself); every other module is
//! compiled with `#![deny(unsafe_code)]`.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod atomic;
pub mod error;
pub mod ggml_type;
pub mod gguf;
pub mod limits;
mod mmap;
pub mod safetensors;

pub use error::{Error, ErrorKind};
pub use ggml_type::GgmlType;
pub use limits::Limits;
