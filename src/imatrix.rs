//! llama.cpp's importance-matrix files (`llama-imatrix` output, `llama-quantize --imatrix` input),
//! read and written in both formats (llama.cpp `tools/imatrix/imatrix.cpp`: `save_imatrix`,
//! `save_imatrix_legacy`; `common/imatrix-loader.cpp`: `common_imatrix_load`):
//!
//! - **GGUF** (current): `general.type = "imatrix"`, `imatrix.datasets` (string array),
//!   `imatrix.chunk_count` and `imatrix.chunk_size` (u32); per weight matrix `W` two F32 tensors,
//!   `W.in_sum2` (ne = [n_cols, n_mat]: the raw sum over calibration tokens of each input column's
//!   squared activation, per expert for MoE) and `W.counts` (ne = [1, n_mat]: tokens summed).
//! - **Legacy `.dat`**: i32 entry count; per entry i32 name length, name bytes, i32 `ncall`, i32
//!   `nval`, `nval` f32 values holding `(sum/count)·ncall`; then optionally i32 chunk count and a
//!   length-prefixed dataset name.
//!
//! [`Imatrix::weights_for`] gives what llama-quantize feeds the quantizers: the mean squared
//! activation per input column (`in_sum2/count` per matrix, 1 where a matrix saw no tokens; for
//! legacy files `value/ncall`).
//!
//! Everything read is validated (lengths against the bytes remaining, matching sums/counts pairs,
//! F32 only, finite non-negative values), with a typed error per failure class.
//! [`ImatrixAccumulator`] collects a matrix from activations (`longquant imatrix`, driven by
//! `eval::imatrix_collect` through the forward pass's observation hook).
use crate::formats::gguf::{write_gguf, TensorSpec, WriteOptions};
use crate::formats::gguf::{Array, GgufFile, Metadata, Value, ValueType};
use crate::formats::GgmlType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Metadata keys of the GGUF format.
pub const KEY_DATASETS: &str = "imatrix.datasets";
/// Chunks the matrix was computed over.
pub const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
/// Tokens per chunk.
pub const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";
/// Longest entry name accepted from a legacy file (GGUF caps tensor names at 63 bytes; legacy
/// names are the same tensor names).
const MAX_NAME: usize = 4096;

/// Which of llama.cpp's two formats a matrix came from (the values' meaning differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// GGUF: raw sums and token counts.
    Gguf,
    /// Legacy `.dat`: per-token means scaled by `ncall`, `counts = [ncall]`.
    Legacy,
}

/// One weight matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ImatrixEntry {
    /// GGUF: raw Σ x² per input column (n_mat × n_cols, matrix-major). Legacy: `(Σx²/count)·ncall`.
    pub sums: Vec<f32>,
    /// GGUF: tokens per matrix (n_mat values). Legacy: `[ncall]`.
    pub counts: Vec<f32>,
}

/// An importance matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Imatrix {
    /// The format the values follow.
    pub format: ImatrixFormat,
    /// Calibration datasets (file names).
    pub datasets: Vec<String>,
    /// Chunks processed.
    pub chunk_count: u32,
    /// Tokens per chunk (0 in legacy files).
    pub chunk_size: u32,
    /// Entries by weight name (e.g. `blk.0.attn_q.weight`).
    pub entries: BTreeMap<String, ImatrixEntry>,
}

/// Why an imatrix file was rejected or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The GGUF container is malformed.
    #[error(transparent)]
    Gguf(#[from] crate::formats::Error),
    /// No entries.
    #[error("{0}: the file holds no importance data")]
    Empty(PathBuf),
    /// A legacy file ended early.
    #[error("{path}: truncated at byte {offset} reading {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A count or length out of range.
    #[error("{path}: {what} = {value} at byte {offset} is out of range")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// Which field.
        what: &'static str,
        /// Declared value.
        value: i64,
        /// Where.
        offset: usize,
    },
    /// An entry name is not UTF-8 or is empty.
    #[error("{path}: entry {index} has an invalid name")]
    BadName {
        /// The file.
        path: PathBuf,
        /// Entry index.
        index: usize,
    },
    /// An entry appears twice.
    #[error("{path}: entry `{name}` appears twice")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The entry.
        name: String,
    },
    /// `W.in_sum2` without `W.counts` or the reverse.
    #[error("{path}: `{name}` lacks its {missing} tensor")]
    Unpaired {
        /// The file.
        path: PathBuf,
        /// The entry.
        name: String,
        /// `in_sum2` or `counts`.
        missing: &'static str,
    },
    /// A tensor is not F32 or has an inconsistent shape.
    #[error("{path}: tensor `{tensor}`: {what}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        what: String,
    },
    /// A metadata key has the wrong type.
    #[error("{path}: metadata `{key}` should be {expected}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Expected type.
        expected: &'static str,
    },
    /// A sum or count is negative, NaN or infinite.
    #[error("{path}: entry `{name}` has a {what} value {value} (must be finite and ≥ 0)")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The entry.
        name: String,
        /// `sum` or `count`.
        what: &'static str,
        /// The value.
        value: f32,
    },
    /// The matrix cannot be expressed in the requested format.
    #[error("cannot write: {0}")]
    Unwritable(String),
    /// Collecting: activations made a sum NaN or infinite (llama-imatrix stops here too).
    #[error("non-finite activations reached `{name}`; the importance matrix would be unusable")]
    NonFinite {
        /// The weight.
        name: String,
    },
    /// Collecting: activations do not fit the weight's registered width.
    #[error("`{name}`: {len} activations are not whole rows of {n_cols}")]
    Width {
        /// The weight.
        name: String,
        /// Values shown.
        len: usize,
        /// Registered width.
        n_cols: usize,
    },
}

fn check_values(path: &Path, name: &str, e: &ImatrixEntry) -> Result<(), ImatrixError> {
    let bad = |what, value| ImatrixError::BadValue {
        path: path.to_path_buf(),
        name: name.to_string(),
        what,
        value,
    };
    if let Some(&v) = e.sums.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(bad("sum", v));
    }
    if let Some(&v) = e.counts.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(bad("count", v));
    }
    Ok(())
}

/// A little-endian cursor over a legacy file that checks every read against the bytes left.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], ImatrixError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(ImatrixError::Truncated {
                path: self.path.to_path_buf(),
                offset: self.at,
                what,
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ImatrixError> {
        let s = self.take(4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A length in `1..=max` that also fits the remaining bytes at `unit` bytes each.
    fn len(&mut self, what: &'static str, max: usize, unit: usize) -> Result<usize, ImatrixError> {
        let offset = self.at;
        let v = self.i32(what)?;
        let left = (self.b.len() - self.at) / unit.max(1);
        match usize::try_from(v) {
            Ok(n) if n >= 1 && n <= max && n <= left => Ok(n),
            _ => Err(ImatrixError::BadLength {
                path: self.path.to_path_buf(),
                what,
                value: v.into(),
                offset,
            }),
        }
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Imatrix {
    /// Reads either format: GGUF when the file starts with `GGUF`, legacy otherwise (as
    /// llama.cpp's loader falls back).
    pub fn read(path: &Path) -> Result<Imatrix, ImatrixError> {
        let mut magic = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| ImatrixError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            f.read(&mut magic).map_err(|source| ImatrixError::Io {
                path: path.to_path_buf(),
                source,
            })?
        };
        if n == 4 && &magic == b"GGUF" {
            Self::read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(|source| ImatrixError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Self::parse_legacy(&bytes, path)
        }
    }

    /// Reads the GGUF format.
    pub fn read_gguf(path: &Path) -> Result<Imatrix, ImatrixError> {
        let f = GgufFile::open(path)?;
        let md = f.metadata();
        let bad_md = |key, expected| ImatrixError::BadMetadata {
            path: path.to_path_buf(),
            key,
            expected,
        };
        let datasets = match md.get(KEY_DATASETS) {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .filter(|a| a.elem_type == ValueType::String)
                .ok_or_else(|| bad_md(KEY_DATASETS, "a string array"))?
                .values
                .iter()
                .map(|s| s.as_str().map(str::to_string).unwrap_or_default())
                .collect(),
        };
        let u32_key = |key| match md.get(key) {
            None => Ok(0),
            Some(Value::U32(v)) => Ok(*v),
            Some(_) => Err(bad_md(key, "a u32")),
        };
        let chunk_count = u32_key(KEY_CHUNK_COUNT)?;
        let chunk_size = u32_key(KEY_CHUNK_SIZE)?;

        let mut sums: BTreeMap<String, &crate::formats::gguf::TensorInfo> = BTreeMap::new();
        let mut counts: BTreeMap<String, &crate::formats::gguf::TensorInfo> = BTreeMap::new();
        for t in f.tensors() {
            let (map, base) = if let Some(b) = t.name.strip_suffix(SUFFIX_SUMS) {
                (&mut sums, b)
            } else if let Some(b) = t.name.strip_suffix(SUFFIX_COUNTS) {
                (&mut counts, b)
            } else {
                continue; // llama.cpp ignores other tensors too
            };
            if base.is_empty() {
                continue;
            }
            map.insert(base.to_string(), t);
        }
        let bad_t = |tensor: &str, what: String| ImatrixError::BadTensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            what,
        };
        let mut entries = BTreeMap::new();
        for name in sums.keys().chain(counts.keys()) {
            if entries.contains_key(name) {
                continue;
            }
            let (Some(s), Some(c)) = (sums.get(name), counts.get(name)) else {
                return Err(ImatrixError::Unpaired {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    missing: if sums.contains_key(name) {
                        "counts"
                    } else {
                        "in_sum2"
                    },
                });
            };
            for t in [s, c] {
                if t.ggml_type != GgmlType::F32 {
                    return Err(bad_t(
                        &t.name,
                        format!("type {:?}, expected F32", t.ggml_type),
                    ));
                }
            }
            let n_sums = s.n_elements();
            let n_counts = c.n_elements();
            // Each matrix (expert) has one count and the same number of columns.
            if n_sums == 0 || n_counts == 0 || n_sums % n_counts != 0 {
                return Err(bad_t(
                    &s.name,
                    format!("{n_sums} sums do not split into {n_counts} matrices"),
                ));
            }
            if s.dims.get(1).copied().unwrap_or(1) != n_counts && s.dims.len() > 1 {
                return Err(bad_t(
                    &s.name,
                    format!("shape {:?} disagrees with {n_counts} counts", s.dims),
                ));
            }
            let e = ImatrixEntry {
                sums: f32s(f.tensor_data(s)),
                counts: f32s(f.tensor_data(c)),
            };
            check_values(path, name, &e)?;
            entries.insert(name.clone(), e);
        }
        if entries.is_empty() {
            return Err(ImatrixError::Empty(path.to_path_buf()));
        }
        Ok(Imatrix {
            format: ImatrixFormat::Gguf,
            datasets,
            chunk_count,
            chunk_size,
            entries,
        })
    }

    /// Parses the legacy `.dat` format from bytes (`path` names the file in errors).
    pub fn parse_legacy(bytes: &[u8], path: &Path) -> Result<Imatrix, ImatrixError> {
        let mut c = Cursor {
            b: bytes,
            at: 0,
            path,
        };
        // Each entry needs at least 4+1+4+4+4 bytes.
        let n_entries = c.len("entry count", usize::MAX, 17)?;
        let mut entries = BTreeMap::new();
        for index in 0..n_entries {
            let len = c.len("name length", MAX_NAME, 1)?;
            let name = std::str::from_utf8(c.take(len, "name")?)
                .ok()
                .filter(|s| !s.contains('\0'))
                .ok_or_else(|| ImatrixError::BadName {
                    path: path.to_path_buf(),
                    index,
                })?
                .to_string();
            let ncall_at = c.at;
            let ncall = c.i32("ncall")?;
            if ncall < 0 {
                return Err(ImatrixError::BadLength {
                    path: path.to_path_buf(),
                    what: "ncall",
                    value: ncall.into(),
                    offset: ncall_at,
                });
            }
            let nval = c.len("value count", usize::MAX, 4)?;
            let e = ImatrixEntry {
                sums: f32s(c.take(nval * 4, "values")?),
                counts: vec![ncall as f32],
            };
            check_values(path, &name, &e)?;
            if entries.insert(name.clone(), e).is_some() {
                return Err(ImatrixError::Duplicate {
                    path: path.to_path_buf(),
                    name,
                });
            }
        }
        // Optional trailer: chunk count, then a length-prefixed dataset name.
        let mut chunk_count = 0;
        let mut datasets = Vec::new();
        if c.remaining() >= 4 {
            chunk_count = c.i32("chunk count")?.max(0) as u32;
            if c.remaining() >= 4 {
                let at = c.at;
                let len = c.i32("dataset length")?;
                if len > 0 {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let s = c
                        .take(len, "dataset name")
                        .map_err(|_| ImatrixError::BadLength {
                            path: path.to_path_buf(),
                            what: "dataset length",
                            value: len as i64,
                            offset: at,
                        })?;
                    datasets.push(String::from_utf8_lossy(s).into_owned());
                }
            }
        }
        Ok(Imatrix {
            format: ImatrixFormat::Legacy,
            datasets,
            chunk_count,
            chunk_size: 0,
            entries,
        })
    }

    /// Number of weight matrices covered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The importance of each input column of `tensor` as llama-quantize derives it: the mean
    /// squared activation (`in_sum2/count` per matrix, 1 for a matrix that saw no tokens; legacy:
    /// `value/ncall`, or the value itself when `ncall` is 0). `None` when the tensor has no entry.
    pub fn weights_for(&self, tensor: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(tensor)?;
        match self.format {
            ImatrixFormat::Gguf => {
                let n_mat = e.counts.len().max(1);
                let ne0 = e.sums.len() / n_mat;
                let mut w = Vec::with_capacity(e.sums.len());
                for (j, &count) in e.counts.iter().enumerate() {
                    let row = e.sums.get(j * ne0..(j + 1) * ne0)?;
                    if count > 0.0 {
                        w.extend(row.iter().map(|&s| s / count));
                    } else {
                        w.extend(std::iter::repeat_n(1.0f32, ne0));
                    }
                }
                Some(w)
            }
            ImatrixFormat::Legacy => {
                let ncall = e.counts.first().copied().unwrap_or(0.0);
                Some(if ncall > 0.0 {
                    e.sums.iter().map(|&s| s / ncall).collect()
                } else {
                    e.sums.clone()
                })
            }
        }
    }

    /// Writes the GGUF format (atomically; `overwrite` replaces an existing file). A legacy
    /// matrix is converted the way llama-imatrix reloads one: sums `value · chunk_size`, counts
    /// `ncall · chunk_size`, with `chunk_size` as given (legacy files do not record it).
    pub fn write_gguf(
        &self,
        path: &Path,
        overwrite: bool,
        legacy_chunk_size: u32,
    ) -> Result<u64, ImatrixError> {
        let m = match self.format {
            ImatrixFormat::Gguf => self.clone(),
            ImatrixFormat::Legacy => self.legacy_to_gguf(legacy_chunk_size)?,
        };
        let mut md = Metadata::new();
        md.insert("general.type", "imatrix");
        let ds: Vec<Value> = m.datasets.iter().map(|s| Value::from(s.as_str())).collect();
        md.insert(KEY_DATASETS, Array::new(ValueType::String, ds));
        md.insert(KEY_CHUNK_COUNT, m.chunk_count);
        md.insert(KEY_CHUNK_SIZE, m.chunk_size);
        let mut blobs: Vec<(TensorSpec, Vec<u8>)> = Vec::with_capacity(2 * m.entries.len());
        for (name, e) in &m.entries {
            let n_mat = e.counts.len();
            if n_mat == 0 || e.sums.is_empty() || e.sums.len() % n_mat != 0 {
                return Err(ImatrixError::Unwritable(format!(
                    "`{name}`: {} sums do not split into {n_mat} matrices",
                    e.sums.len()
                )));
            }
            let ne0 = (e.sums.len() / n_mat) as u64;
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            blobs.push((
                TensorSpec::new(
                    format!("{name}{SUFFIX_SUMS}"),
                    vec![ne0, n_mat as u64],
                    GgmlType::F32,
                ),
                bytes(&e.sums),
            ));
            blobs.push((
                TensorSpec::new(
                    format!("{name}{SUFFIX_COUNTS}"),
                    vec![1, n_mat as u64],
                    GgmlType::F32,
                ),
                bytes(&e.counts),
            ));
        }
        let refs: Vec<(TensorSpec, &[u8])> = blobs
            .iter()
            .map(|(s, b)| (s.clone(), b.as_slice()))
            .collect();
        Ok(write_gguf(path, &md, &refs, WriteOptions { overwrite })?)
    }

    fn legacy_to_gguf(&self, chunk_size: u32) -> Result<Imatrix, ImatrixError> {
        if chunk_size == 0 {
            return Err(ImatrixError::Unwritable(
                "a legacy matrix needs the chunk size it was computed with".into(),
            ));
        }
        let cs = chunk_size as f32;
        Ok(Imatrix {
            format: ImatrixFormat::Gguf,
            datasets: self.datasets.clone(),
            chunk_count: self.chunk_count,
            chunk_size,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        ImatrixEntry {
                            sums: e.sums.iter().map(|&s| s * cs).collect(),
                            counts: vec![e.counts.first().copied().unwrap_or(0.0) * cs],
                        },
                    )
                })
                .collect(),
        })
    }

    /// The legacy `.dat` bytes. A GGUF matrix is converted as llama-imatrix saves one: `ncall =
    /// ⌈max count / chunk_size⌉`, values `(sum/count)·ncall` (1·ncall for a matrix without tokens).
    pub fn to_legacy_bytes(&self) -> Result<Vec<u8>, ImatrixError> {
        let i32_of = |v: usize, what: &str| {
            i32::try_from(v)
                .map_err(|_| ImatrixError::Unwritable(format!("{what} {v} exceeds i32")))
        };
        let mut o = Vec::new();
        o.extend_from_slice(&i32_of(self.entries.len(), "entry count")?.to_le_bytes());
        for (name, e) in &self.entries {
            o.extend_from_slice(&i32_of(name.len(), "name length")?.to_le_bytes());
            o.extend_from_slice(name.as_bytes());
            let (ncall, vals): (i32, Vec<f32>) = match self.format {
                ImatrixFormat::Legacy => (
                    e.counts.first().copied().unwrap_or(0.0) as i32,
                    e.sums.clone(),
                ),
                ImatrixFormat::Gguf => {
                    let n_mat = e.counts.len().max(1);
                    let ne0 = (e.sums.len() / n_mat).max(1);
                    let max_count = e.counts.iter().fold(0.0f32, |a, &b| a.max(b)) as i64;
                    let cs = i64::from(self.chunk_size.max(1));
                    let ncall = ((max_count + cs - 1) / cs) as i32;
                    let vals = e
                        .sums
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| {
                            let c = e.counts.get(i / ne0).copied().unwrap_or(0.0);
                            let (s, c) = if c == 0.0 { (1.0, 1.0) } else { (s, c) };
                            s / c * ncall as f32
                        })
                        .collect();
                    (ncall, vals)
                }
            };
            o.extend_from_slice(&ncall.to_le_bytes());
            o.extend_from_slice(&i32_of(vals.len(), "value count")?.to_le_bytes());
            for v in vals {
                o.extend_from_slice(&v.to_le_bytes());
            }
        }
        o.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.last().map_or("", String::as_str);
        o.extend_from_slice(&i32_of(ds.len(), "dataset length")?.to_le_bytes());
        o.extend_from_slice(ds.as_bytes());
        Ok(o)
    }

    /// Writes the legacy `.dat` format (all or nothing, replacing an existing file).
    pub fn write_legacy(&self, path: &Path) -> Result<(), ImatrixError> {
        let bytes = self.to_legacy_bytes()?;
        crate::formats::atomic::write_atomic(path, &bytes, true).map_err(|e| ImatrixError::Io {
            path: path.to_path_buf(),
            source: match e.kind {
                crate::formats::ErrorKind::Io { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })
    }
}

/// Collects an importance matrix from activations, as llama-imatrix's collector does for dense
/// weights: for every registered weight, the sum over all rows shown to it of each input
/// column's squared activation, plus the number of rows (tokens).
///
/// Sums are kept in f64 (llama.cpp keeps f32; f64 loses nothing at very long calibration runs
/// and rounds to the same f32 to within a few ulps at short ones). Each column is summed in
/// row order whatever the work split, so the result does not depend on the thread count.
#[derive(Clone, Debug, Default)]
pub struct ImatrixAccumulator {
    entries: BTreeMap<String, AccEntry>,
}

#[derive(Clone, Debug)]
struct AccEntry {
    sums: Vec<f64>,
    count: u64,
}

/// Columns per parallel task in [`ImatrixAccumulator::add_rows`].
const ACC_COLS_PER_TASK: usize = 128;
/// Below this many values per call the accumulation runs on the calling thread only.
const ACC_PARALLEL_MIN: usize = 1 << 16;

impl ImatrixAccumulator {
    /// An empty accumulator with no weights registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares the weight `name` with `n_cols` input columns (zero sums, zero count). A second
    /// registration with the same width keeps the data; another width is an error.
    pub fn register(&mut self, name: &str, n_cols: usize) -> Result<(), ImatrixError> {
        match self.entries.get(name) {
            Some(e) if e.sums.len() == n_cols => Ok(()),
            Some(e) => Err(ImatrixError::Width {
                name: name.to_string(),
                len: n_cols,
                n_cols: e.sums.len(),
            }),
            None if n_cols == 0 => Err(ImatrixError::Width {
                name: name.to_string(),
                len: 0,
                n_cols: 0,
            }),
            None => {
                self.entries.insert(
                    name.to_string(),
                    AccEntry {
                        sums: vec![0.0; n_cols],
                        count: 0,
                    },
                );
                Ok(())
            }
        }
    }

    /// Whether `name` is registered (only registered weights are collected).
    pub fn is_registered(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Adds per-column sums of squares of `n_rows` input rows of `name`, computed elsewhere (a
    /// GPU). Same result as [`Self::add_rows`] on those rows, up to summation order. Returns
    /// false when `name` is not registered.
    pub fn add_sums(
        &mut self,
        name: &str,
        sums: &[f64],
        n_rows: u64,
    ) -> Result<bool, ImatrixError> {
        let Some(e) = self.entries.get_mut(name) else {
            return Ok(false);
        };
        if sums.len() != e.sums.len() {
            return Err(ImatrixError::Width {
                name: name.to_string(),
                len: sums.len(),
                n_cols: e.sums.len(),
            });
        }
        for (s, &v) in e.sums.iter_mut().zip(sums) {
            *s += v;
        }
        e.count += n_rows;
        if e.sums
            .iter()
            .any(|s| !s.is_finite() || *s > f64::from(f32::MAX))
        {
            return Err(ImatrixError::NonFinite {
                name: name.to_string(),
            });
        }
        Ok(true)
    }

    /// Adds the rows of `acts` (whole rows of the weight's width, row-major) to `name`'s sums
    /// and counts. Returns `Ok(false)` when `name` is not registered (nothing is done). Errors:
    /// `acts` is not a whole number of rows, or a sum becomes NaN or infinite (llama-imatrix
    /// stops there too: such a matrix would poison the quantization).
    pub fn add_rows(&mut self, name: &str, acts: &[f32]) -> Result<bool, ImatrixError> {
        use rayon::prelude::*;
        let Some(e) = self.entries.get_mut(name) else {
            return Ok(false);
        };
        let n_cols = e.sums.len();
        if !acts.len().is_multiple_of(n_cols) {
            return Err(ImatrixError::Width {
                name: name.to_string(),
                len: acts.len(),
                n_cols,
            });
        }
        let n_rows = acts.len() / n_cols;
        let add_block = |c0: usize, block: &mut [f64]| {
            for row in acts.chunks_exact(n_cols) {
                let xs = &row[c0..c0 + block.len()];
                for (s, &x) in block.iter_mut().zip(xs) {
                    let x = f64::from(x);
                    *s += x * x;
                }
            }
        };
        if acts.len() >= ACC_PARALLEL_MIN && rayon::current_num_threads() > 1 {
            e.sums
                .par_chunks_mut(ACC_COLS_PER_TASK)
                .enumerate()
                .for_each(|(i, block)| add_block(i * ACC_COLS_PER_TASK, block));
        } else {
            add_block(0, &mut e.sums);
        }
        e.count += n_rows as u64;
        if e.sums
            .iter()
            .any(|s| !s.is_finite() || *s > f64::from(f32::MAX))
        {
            return Err(ImatrixError::NonFinite {
                name: name.to_string(),
            });
        }
        Ok(true)
    }

    /// Rows (tokens) added to `name` so far.
    pub fn count(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|e| e.count)
    }

    /// Names of the registered weights, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The collected matrix in the GGUF format's terms (raw f32 sums, one count per weight).
    /// Weights that saw no rows are left out, as llama-imatrix never creates them.
    pub fn to_imatrix(&self, datasets: Vec<String>, chunk_count: u32, chunk_size: u32) -> Imatrix {
        Imatrix {
            format: ImatrixFormat::Gguf,
            datasets,
            chunk_count,
            chunk_size,
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| e.count > 0)
                .map(|(k, e)| {
                    (
                        k.clone(),
                        ImatrixEntry {
                            sums: e.sums.iter().map(|&s| s as f32).collect(),
                            counts: vec![e.count as f32],
                        },
                    )
                })
                .collect(),
        }
    }
}
