//! Importance matrices for `convert --imatrix` and `quantize --imatrix`, applied the way
//! llama-quantize applies them (tools/quantize/quantize.cpp and src/llama-quant.cpp):
//!
//! - the file (GGUF or legacy `.dat`, see [`crate::imatrix`]) is read once and every entry turned
//!   into per-input-column weights; a NaN or infinity anywhere refuses the whole file;
//! - a tensor's weights are looked up by its GGUF name; a tensor without an entry is quantized
//!   without weights (llama-imatrix never records `token_embd.weight`, for one);
//! - an entry whose length is not the tensor's row length is an error, except for the token
//!   embeddings, which are then quantized without weights;
//! - the output records `quantize.imatrix.file`, `.dataset`, `.entries_count` and `.chunks_count`.
//!
//! The weights are per input column (`ne[0]`). The q/k rope permutation `convert` applies reorders
//! rows only, so a column's weight is the same before and after it; and an imatrix is computed on
//! a GGUF model, whose q/k rows are already permuted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use longquant_formats::gguf::Metadata;

use super::controls::set_last;
use super::pipeline::{ConvertError, PlannedTensor};
use crate::imatrix::Imatrix;

/// The longest string llama-quantize stores in a metadata override (its buffer is 128 bytes).
const MAX_OVERRIDE_STR: usize = 127;

/// An importance matrix ready for quantization: per-column weights by GGUF tensor name.
#[derive(Debug, Clone)]
pub struct ImportanceWeights {
    /// The file, as given.
    pub path: PathBuf,
    /// Calibration datasets the file names.
    pub datasets: Vec<String>,
    /// Chunks the matrix was computed on (0 when unknown).
    pub chunk_count: u32,
    /// Entries kept after `--include-weights`/`--exclude-weights` (what
    /// `quantize.imatrix.entries_count` records; renaming for `--prune-layers` does not change it).
    entries_count: usize,
    weights: HashMap<String, Vec<f32>>,
}

/// llama-quantize's `tensor_name_match_token_embd`: the tensors whose mismatched imatrix entry
/// is tolerated.
fn is_token_embd(name: &str) -> bool {
    name == "token_embd.weight" || name == "per_layer_token_embd.weight"
}

/// Cut `s` to at most `max` bytes at a character boundary (llama-quantize's `strncpy` cuts bytes).
fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

impl ImportanceWeights {
    /// Read `path` and derive every entry's weights; refuses non-finite values.
    pub fn load(path: &Path) -> Result<ImportanceWeights, ConvertError> {
        Ok(
            ImportanceWeights::load_filtered(path, &[], &[])?.unwrap_or_else(|| {
                ImportanceWeights {
                    path: path.to_path_buf(),
                    datasets: Vec::new(),
                    chunk_count: 0,
                    entries_count: 0,
                    weights: HashMap::new(),
                }
            }),
        )
    }

    /// Read `path` keeping only the entries llama-quantize keeps: with `include` non-empty, those
    /// whose name contains one of its strings; else without those whose name contains one of
    /// `exclude`'s (`--include-weights`, `--exclude-weights`). `None` when no entry is left: then,
    /// as in llama-quantize, there is no importance matrix at all. Non-finite values are refused
    /// in the kept entries.
    pub fn load_filtered(
        path: &Path,
        include: &[String],
        exclude: &[String],
    ) -> Result<Option<ImportanceWeights>, ConvertError> {
        let im = Imatrix::read(path)?;
        let mut weights = HashMap::with_capacity(im.entries.len());
        for name in im.entries.keys() {
            if exclude.iter().any(|x| name.contains(x.as_str()))
                || (!include.is_empty() && !include.iter().any(|x| name.contains(x.as_str())))
            {
                continue;
            }
            let Some(w) = im.weights_for(name) else {
                continue;
            };
            if let Some(&value) = w.iter().find(|x| !x.is_finite()) {
                return Err(ConvertError::ImatrixNonFinite {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    value,
                });
            }
            weights.insert(name.clone(), w);
        }
        if weights.is_empty() {
            return Ok(None);
        }
        Ok(Some(ImportanceWeights {
            path: path.to_path_buf(),
            datasets: im.datasets,
            chunk_count: im.chunk_count,
            entries_count: weights.len(),
            weights,
        }))
    }

    /// After `--prune-layers`: entries are looked up by the tensors' new names, each pair being
    /// (new name, name before pruning), as llama-quant.cpp's `remap_imatrix` looks them up.
    pub fn rename(&mut self, pairs: &[(String, String)]) {
        let mut renamed = HashMap::with_capacity(self.weights.len());
        for (new, old) in pairs {
            if let Some(w) = self.weights.get(old) {
                renamed.insert(new.clone(), w.clone());
            }
        }
        self.weights = renamed;
    }

    /// Entries (weight matrices) in the file.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The weights to quantize `t` with: `None` when the file has no entry for it (or a
    /// mismatched one for the token embeddings); an error when the entry's length is not the
    /// tensor's row length.
    pub fn for_tensor(&self, t: &PlannedTensor) -> Result<Option<&[f32]>, ConvertError> {
        let Some(w) = self.weights.get(&t.name) else {
            return Ok(None);
        };
        let row_len = t.dims.first().copied().unwrap_or(1);
        // llama-quantize compares against ne[0]·ne[2] (one slice per expert); Llama has no
        // experts, so anything beyond 2-D is refused rather than silently mis-indexed.
        let n_mat = t.dims.get(2).copied().unwrap_or(1);
        if n_mat != 1 || t.dims.len() > 3 {
            return Err(ConvertError::NotSupported(format!(
                "importance weights for {}-D tensor {} (dims {:?})",
                t.dims.len(),
                t.name,
                t.dims
            )));
        }
        if w.len() as u64 == row_len {
            Ok(Some(w))
        } else if is_token_embd(&t.name) {
            Ok(None)
        } else {
            Err(ConvertError::ImatrixSize {
                path: self.path.clone(),
                name: t.name.clone(),
                found: w.len() as u64,
                expected: row_len,
            })
        }
    }

    /// Check every tensor that will be (re)encoded, before anything is written.
    pub fn check<'a>(
        &self,
        tensors: impl IntoIterator<Item = &'a PlannedTensor>,
    ) -> Result<(), ConvertError> {
        for t in tensors {
            self.for_tensor(t)?;
        }
        Ok(())
    }

    /// Add the keys llama-quantize writes when it used an importance matrix: the file name as
    /// given and the first dataset (each cut to 127 bytes), the entry count and, when known, the
    /// chunk count (both UINT32).
    pub fn add_metadata(&self, md: &mut Metadata) {
        let file = self.path.to_string_lossy();
        // llama-quantize passes these as metadata overrides: each set moves its key last.
        set_last(
            md,
            "quantize.imatrix.file",
            truncate_bytes(&file, MAX_OVERRIDE_STR),
        );
        if let Some(d) = self.datasets.first() {
            set_last(
                md,
                "quantize.imatrix.dataset",
                truncate_bytes(d, MAX_OVERRIDE_STR),
            );
        }
        set_last(
            md,
            "quantize.imatrix.entries_count",
            u32::try_from(self.entries_count).unwrap_or(u32::MAX),
        );
        if self.chunk_count > 0 {
            set_last(md, "quantize.imatrix.chunks_count", self.chunk_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate_bytes("abc", 127), "abc");
        assert_eq!(truncate_bytes("abcdef", 3), "abc");
        // "é" is two bytes: cutting inside it backs off to the boundary before it.
        assert_eq!(truncate_bytes("aé", 2), "a");
    }
}
