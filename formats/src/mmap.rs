//! The one place in this crate that uses `unsafe`: read-only memory maps of input files.
//!
//! Why mapping is sound enough: `memmap2::Mmap::map` is `unsafe` because the mapped bytes can change
//! (or the mapping can fault with SIGBUS) if another process truncates or rewrites the file while we
//! hold the map; Rust's `&[u8]` promises immutability that the OS cannot enforce. Every mmap-based
//! model reader (llama.cpp, safetensors, candle) accepts the same hazard: we never write through the
//! map, and we treat files being modified under us as outside our contract. Everything we read from
//! the map is still validated as hostile input, so a concurrent modification can give wrong numbers
//! or a fault, but never an out-of-bounds access by our own indexing (all of it goes through checked
//! `get`).

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;

/// A read-only view of a whole file.
pub(crate) struct MappedFile {
    /// `None` for an empty file: mapping zero bytes is not portable, and an empty slice serves.
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Opens `path` read-only and maps all of it.
    pub(crate) fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only and private to this struct; we only ever create shared `&[u8]`
        // views of it. The remaining hazard (another process changing the file while it is mapped) is
        // accepted and documented in the module comment above.
        let map = unsafe { memmap2::MmapOptions::new().map(&file)? };
        Ok(MappedFile { map: Some(map) })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("len", &self.bytes().len())
            .finish()
    }
}
