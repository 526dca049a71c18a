//! llama.cpp's split layout: one model in several GGUF files `PREFIX-00001-of-0000N.gguf`, as
//! `llama-gguf-split --split` writes it (tools/gguf-split/gguf-split.cpp) and
//! `llama_model_loader` reads it (src/llama-model-loader.cpp):
//!
//! - every file carries `split.no` (u16, 0-based), `split.count` (u16) and `split.tensors.count`
//!   (i32, the tensors of the whole model); only the first file carries the model's metadata;
//! - tensors are cut in file order; a new file starts when the running sum of the tensors' padded
//!   sizes would exceed the maximum (metadata not counted), so a file never holds zero tensors;
//! - the loader is given the first file and derives the others' names from its suffix.
//!
//! [`SplitWriter`] writes one or several files through [`GgufWriter`]s opened together, so that no
//! file is renamed into place before every file is complete. Reading a set is the GGUF reader's
//! job: [`GgufFile::open`](longquant_formats::gguf::GgufFile::open) given the first file opens and
//! checks the whole set, and every command reads it as the merged model.

use std::path::{Path, PathBuf};

use longquant_formats::gguf::WriteOptions;
use longquant_formats::gguf::{GgufWriter, Metadata, TensorSpec, Value};

pub use longquant_formats::gguf::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};

/// Tensor data alignment gguf-split assumes when it sums sizes (`GGUF_DEFAULT_ALIGNMENT`).
const SPLIT_ALIGN: u64 = 32;

/// Problems with a split set.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Reading one of the files failed.
    #[error(transparent)]
    Format(#[from] longquant_formats::Error),
    /// More files than a u16 count can name.
    #[error("the model needs {0} split files; at most 65535 are possible")]
    TooMany(usize),
}

/// The file names of an `n`-way split of `out`: `X.gguf` → `X-00001-of-0000n.gguf`, ...
pub fn split_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    let s = out.to_string_lossy();
    let prefix = s.strip_suffix(".gguf").unwrap_or(&s).to_string();
    (0..n)
        .map(|i| PathBuf::from(format!("{prefix}-{:05}-of-{n:05}.gguf", i + 1)))
        .collect()
}

/// Which file each tensor goes to (gguf-split's `MODE_SIZE` rule): sizes in write order, the
/// maximum in bytes. Returns the split index of every tensor; indices are non-decreasing and each
/// split holds at least one tensor.
pub fn assign_splits(n_bytes: &[u64], max_size: u64) -> Vec<usize> {
    let mut out = Vec::with_capacity(n_bytes.len());
    let mut split = 0usize;
    let mut current = 0u64;
    for (i, &b) in n_bytes.iter().enumerate() {
        let padded = b.div_ceil(SPLIT_ALIGN).saturating_mul(SPLIT_ALIGN);
        let next = current.saturating_add(padded);
        if i > 0 && current > 0 && next > max_size {
            split += 1;
            current = padded;
        } else {
            current = next;
        }
        out.push(split);
    }
    out
}

/// The metadata of split `no` of `count`: the model's metadata (first file only) plus the keys.
pub fn split_metadata(model: &Metadata, no: usize, count: usize, n_tensors: usize) -> Metadata {
    let mut m = if no == 0 {
        model.clone()
    } else {
        Metadata::new()
    };
    m.insert(KEY_SPLIT_NO, Value::U16(no as u16));
    m.insert(KEY_SPLIT_COUNT, Value::U16(count as u16));
    m.insert(KEY_SPLIT_TENSORS_COUNT, Value::I32(n_tensors as i32));
    m
}

/// How the output is cut into files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitLayout {
    /// One file, named as given.
    Single,
    /// `--split-max-size`: gguf-split's rule with at most this many tensor bytes per file.
    MaxSize(u64),
    /// `--keep-split`: the file index of every tensor (in write order, non-decreasing, every
    /// index below the largest used). Split names even for one file, as llama-quantize names it;
    /// split keys only for several.
    Given(Vec<usize>),
}

impl SplitLayout {
    /// How many files the layout makes of tensors of these sizes.
    pub fn count(&self, sizes: &[u64]) -> Option<usize> {
        match self {
            SplitLayout::Single => None,
            SplitLayout::MaxSize(max) => {
                Some(assign_splits(sizes, *max).last().map_or(1, |s| s + 1))
            }
            SplitLayout::Given(v) => Some(v.iter().max().map_or(1, |s| s + 1)),
        }
    }
}

/// Writes a model to one file, or to a split set, streaming tensor data in plan order.
#[derive(Debug)]
pub struct SplitWriter {
    writers: Vec<GgufWriter>,
    paths: Vec<PathBuf>,
    /// Split index of every tensor.
    split_of: Vec<usize>,
    /// Tensor whose bytes come next.
    current: usize,
    /// Bytes still expected for the current tensor.
    remaining: u64,
    sizes: Vec<u64>,
}

impl SplitWriter {
    /// Plan and open the output: one file at `out` for [`SplitLayout::Single`], else llama.cpp's
    /// split layout beside it (always with split names, even when one file suffices, so that
    /// scripts can rely on the names). Temporary files are created for every part now.
    pub fn create(
        out: &Path,
        metadata: &Metadata,
        specs: Vec<TensorSpec>,
        sizes: Vec<u64>,
        layout: &SplitLayout,
        opts: WriteOptions,
    ) -> Result<SplitWriter, SplitError> {
        let (split_of, keys) = match layout {
            SplitLayout::Single => {
                let n = specs.len();
                let w = GgufWriter::create(out, metadata, specs, opts)?;
                return Ok(SplitWriter {
                    writers: vec![w],
                    paths: vec![out.to_path_buf()],
                    split_of: vec![0; n],
                    current: 0,
                    remaining: sizes.first().copied().unwrap_or(0),
                    sizes,
                });
            }
            SplitLayout::MaxSize(max) => (assign_splits(&sizes, *max), true),
            // llama-quantize --keep-split writes split keys only when there are several files.
            SplitLayout::Given(v) => (v.clone(), v.iter().any(|&s| s > 0)),
        };
        let count = split_of.iter().max().map_or(1, |s| s + 1);
        if count > usize::from(u16::MAX) {
            return Err(SplitError::TooMany(count));
        }
        let paths = split_paths(out, count);
        let mut per_split: Vec<Vec<TensorSpec>> = vec![Vec::new(); count];
        for (spec, &s) in specs.into_iter().zip(&split_of) {
            if let Some(v) = per_split.get_mut(s) {
                v.push(spec);
            }
        }
        let n_tensors = split_of.len();
        let mut writers = Vec::with_capacity(count);
        for (i, (specs, path)) in per_split.into_iter().zip(&paths).enumerate() {
            let md = if keys {
                split_metadata(metadata, i, count, n_tensors)
            } else {
                metadata.clone()
            };
            writers.push(GgufWriter::create(path, &md, specs, opts)?);
        }
        Ok(SplitWriter {
            writers,
            paths,
            split_of,
            current: 0,
            remaining: sizes.first().copied().unwrap_or(0),
            sizes,
        })
    }

    /// The files this writer produces (one, or the split set in order).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Appends bytes of the current tensor (never spanning two tensors), as
    /// [`GgufWriter::write_tensor_data`].
    pub fn write_tensor_data(&mut self, chunk: &[u8]) -> Result<(), SplitError> {
        let s = self.split_of.get(self.current).copied().unwrap_or(0);
        if let Some(w) = self.writers.get_mut(s) {
            w.write_tensor_data(chunk)?;
        }
        self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
        // Zero-byte tensors are skipped by the GgufWriter too.
        while self.remaining == 0 && self.current < self.split_of.len() {
            self.current += 1;
            self.remaining = self.sizes.get(self.current).copied().unwrap_or(0);
            if self.remaining != 0 {
                break;
            }
        }
        Ok(())
    }

    /// Finish every file (fsync, rename). If finishing one fails, the files already renamed into
    /// place are removed, so a split set is never left half-written. Returns the total size.
    pub fn finish(self) -> Result<u64, SplitError> {
        let mut done: Vec<PathBuf> = Vec::new();
        let mut total = 0u64;
        for (w, p) in self.writers.into_iter().zip(&self.paths) {
            match w.finish() {
                Ok(n) => {
                    total += n;
                    done.push(p.clone());
                }
                Err(e) => {
                    for d in &done {
                        let _ = std::fs::remove_file(d);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = split_paths(Path::new("/x/model.Q4_K_M.gguf"), 3);
        assert_eq!(p[0], PathBuf::from("/x/model.Q4_K_M-00001-of-00003.gguf"));
        assert_eq!(p[2], PathBuf::from("/x/model.Q4_K_M-00003-of-00003.gguf"));
    }

    #[test]
    fn assignment_like_gguf_split() {
        // 100 B tensors pad to 128; max 300 → two per file.
        assert_eq!(assign_splits(&[100; 5], 300), vec![0, 0, 1, 1, 2]);
        // A tensor larger than the maximum gets a file of its own, never an empty file.
        assert_eq!(assign_splits(&[1000, 10, 1000], 300), vec![0, 1, 2]);
        assert_eq!(assign_splits(&[10, 10], 1 << 30), vec![0, 0]);
    }
}
