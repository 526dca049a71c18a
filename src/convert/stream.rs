//! The tensor-streaming core shared by `convert` (safetensors → GGUF) and `quantize` (GGUF → GGUF).
//!
//! Both commands plan every output tensor first (name, ggml dims, type, where its values come
//! from); this module then streams them into a [`SplitWriter`] in plan order. Each tensor is
//! processed in row slices of at most [`SLICE_WEIGHTS`] weights: the source rows are decoded to
//! f32 (widened from F32/F16/BF16 safetensors, or dequantized from a ggml type), q/k rows permuted
//! when the plan says so, checked for NaN/Inf and quantized on all cores. A tensor whose source is
//! already in the target block type is copied byte for byte (llama-quantize does the same), so
//! requantizing never touches what stays. Peak memory is a few slices whatever the model size.

use std::path::PathBuf;

use longquant_formats::safetensors::Dtype;
use longquant_formats::GgmlType;
use longquant_quants::tensor::{dequantize_tensor, quantize_tensor};
use longquant_quants::{BlockFormat, QuantError};
use rayon::prelude::*;

use super::importance::ImportanceWeights;
use super::names::{permute_heads, rows_per_head};
use super::pipeline::{ConvertError, PlannedTensor, Progress, Source};
use super::split::SplitWriter;

/// Weights converted per slice: 16 Mi f32 = 64 MiB of f32 plus at most as much output.
pub const SLICE_WEIGHTS: usize = 16 << 20;

/// How a source tensor's bytes encode its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Little-endian floats of a safetensors dtype (F32, F16 or BF16).
    Float(FloatKind),
    /// Rows of a ggml type (float or block-quantized), as stored in a GGUF file.
    Ggml(GgmlType),
}

/// The float dtypes a safetensors checkpoint may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl FloatKind {
    /// The kind of a safetensors dtype, if it is one we read.
    pub fn from_dtype(d: &Dtype) -> Option<FloatKind> {
        match d {
            Dtype::F32 => Some(FloatKind::F32),
            Dtype::F16 => Some(FloatKind::F16),
            Dtype::BF16 => Some(FloatKind::BF16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F16 | FloatKind::BF16 => 2,
        }
    }
}

/// One source tensor: its encoding and all its bytes (borrowed from a memory map).
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// How the bytes encode values.
    pub encoding: Encoding,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Where tensors are read from: a safetensors checkpoint or a GGUF model (one file or a split set).
pub trait TensorSource: Sync {
    /// The tensor called `name` in the source, if present and of a readable kind.
    fn raw(&self, name: &str) -> Option<RawTensor<'_>>;
    /// The files of the source (so that the output can never be one of them).
    fn input_paths(&self) -> Vec<PathBuf>;
}

impl TensorSource for longquant_formats::safetensors::SafetensorsModel {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let t = self.get(name)?;
        Some(RawTensor {
            encoding: Encoding::Float(FloatKind::from_dtype(&t.dtype)?),
            bytes: self.data(t),
        })
    }
    fn input_paths(&self) -> Vec<PathBuf> {
        self.shard_paths().to_vec()
    }
}

impl TensorSource for longquant_formats::gguf::GgufFile {
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.tensor(name)?;
        Some(RawTensor {
            encoding: Encoding::Ggml(info.ggml_type),
            bytes: self.tensor_data(info),
        })
    }
    fn input_paths(&self) -> Vec<PathBuf> {
        self.paths()
    }
}

/// The quants crate's format for a ggml type we can write or read.
pub fn block_format(t: GgmlType) -> Option<BlockFormat> {
    Some(match t {
        GgmlType::F32 => BlockFormat::F32,
        GgmlType::F16 => BlockFormat::F16,
        GgmlType::BF16 => BlockFormat::BF16,
        GgmlType::Q4_0 => BlockFormat::Q4_0,
        GgmlType::Q4_1 => BlockFormat::Q4_1,
        GgmlType::Q5_0 => BlockFormat::Q5_0,
        GgmlType::Q5_1 => BlockFormat::Q5_1,
        GgmlType::Q8_0 => BlockFormat::Q8_0,
        GgmlType::Q2_K => BlockFormat::Q2_K,
        GgmlType::Q3_K => BlockFormat::Q3_K,
        GgmlType::Q4_K => BlockFormat::Q4_K,
        GgmlType::Q5_K => BlockFormat::Q5_K,
        GgmlType::Q6_K => BlockFormat::Q6_K,
        GgmlType::IQ4_NL => BlockFormat::IQ4_NL,
        GgmlType::IQ4_XS => BlockFormat::IQ4_XS,
        _ => return None,
    })
}

/// Decode little-endian source floats into f32.
fn widen(kind: FloatKind, src: &[u8], dst: &mut [f32]) {
    match kind {
        FloatKind::F32 => dst
            .par_iter_mut()
            .zip(src.par_chunks_exact(4))
            .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        FloatKind::F16 => dst
            .par_iter_mut()
            .zip(src.par_chunks_exact(2))
            .for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        // BF16 is the top half of an f32: widening is exact.
        FloatKind::BF16 => dst
            .par_iter_mut()
            .zip(src.par_chunks_exact(2))
            .for_each(|(d, b)| {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
            }),
    }
}

/// What streaming produced besides the file.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Source bytes read.
    pub source_bytes: u64,
    /// Non-fatal warnings (F16 overflow).
    pub warnings: Vec<String>,
    /// Tensors copied unchanged (already in the target type).
    pub copied: usize,
}

/// The bytes one source row occupies.
fn source_row_bytes(enc: Encoding, row_len: usize) -> Option<usize> {
    match enc {
        Encoding::Float(k) => row_len.checked_mul(k.size()),
        Encoding::Ggml(t) => t.row_size(row_len as u64).map(|n| n as usize),
    }
}

/// Stream `tensors` (in plan order) from `source` into `writer`. The writer must have been
/// created from the same plan. With `imatrix`, every tensor that is encoded (not copied) is
/// quantized with its importance weights when the matrix has an entry for it.
pub fn stream_tensors(
    tensors: &[PlannedTensor],
    source: &dyn TensorSource,
    writer: &mut SplitWriter,
    imatrix: Option<&ImportanceWeights>,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<StreamStats, ConvertError> {
    let mut stats = StreamStats::default();
    let raws: Vec<Option<RawTensor<'_>>> = tensors
        .iter()
        .map(|t| match &t.source {
            Source::Checkpoint(n) => source.raw(n),
            Source::Generated(_) => None,
        })
        .collect();
    let total: u64 = tensors
        .iter()
        .zip(&raws)
        .map(|(t, r)| match (&t.source, r) {
            (Source::Generated(v), _) => v.len() as u64 * 4,
            (_, Some(r)) => r.bytes.len() as u64,
            _ => 0,
        })
        .sum();
    progress(Progress::Start {
        tensors: tensors.len(),
        bytes: total,
    });

    let mut f32_buf: Vec<f32> = Vec::new();
    let mut perm_buf: Vec<f32> = Vec::new();
    let mut out_buf: Vec<u8> = Vec::new();
    for (t, raw) in tensors.iter().zip(&raws) {
        crate::interrupt::check()?;
        let src_name = match &t.source {
            Source::Checkpoint(n) => n.clone(),
            Source::Generated(_) => t.name.clone(),
        };
        let row_len = t.dims.first().copied().unwrap_or(1) as usize;
        let n_rows: usize = t.dims.iter().skip(1).product::<u64>() as usize;
        let (encoding, bytes) = match (&t.source, raw) {
            (Source::Generated(_), _) => (Encoding::Float(FloatKind::F32), &[][..]),
            (Source::Checkpoint(_), Some(r)) => (r.encoding, r.bytes),
            (Source::Checkpoint(n), None) => {
                return Err(ConvertError::MissingTensor { name: n.clone() })
            }
        };
        let row_bytes = source_row_bytes(encoding, row_len).ok_or_else(|| {
            ConvertError::NotSupported(format!(
                "{src_name}: rows of {row_len} do not fit the source type"
            ))
        })?;
        if !matches!(t.source, Source::Generated(_))
            && Some(bytes.len()) != row_bytes.checked_mul(n_rows)
        {
            return Err(ConvertError::MissingTensor { name: src_name });
        }

        // Already in the target block type and nothing to permute: copy (llama-quantize's
        // "nothing to do" path). Float targets are re-encoded so NaN/Inf are still caught.
        let copy = encoding == Encoding::Ggml(t.ggml_type)
            && t.ggml_type.is_quantized()
            && t.permute_heads.is_none();
        if copy {
            let rows_per_slice = (SLICE_WEIGHTS / row_len.max(1)).max(1);
            for chunk in bytes.chunks(rows_per_slice * row_bytes.max(1)) {
                crate::interrupt::check()?;
                writer.write_tensor_data(chunk).map_err(split_err)?;
                progress(Progress::Advance {
                    name: &t.name,
                    bytes: chunk.len() as u64,
                });
            }
            stats.source_bytes += bytes.len() as u64;
            stats.copied += 1;
            progress(Progress::TensorDone { name: &t.name });
            continue;
        }

        let fmt = block_format(t.ggml_type).ok_or_else(|| {
            ConvertError::NotSupported(format!(
                "writing tensor type {} (for {})",
                t.ggml_type.name(),
                t.name
            ))
        })?;
        let src_fmt = match encoding {
            Encoding::Ggml(g) => Some(block_format(g).ok_or_else(|| {
                ConvertError::NotSupported(format!(
                    "reading tensor type {} (of {src_name})",
                    g.name()
                ))
            })?),
            Encoding::Float(_) => None,
        };
        // Rows per slice: a whole number of heads for permuted tensors.
        let unit = match t.permute_heads {
            Some(h) => rows_per_head(n_rows as u64, h).map_err(|source| ConvertError::Permute {
                name: src_name.clone(),
                source,
            })? as usize,
            None => 1,
        };
        let rows_per_slice = ((SLICE_WEIGHTS / row_len.max(1)) / unit).max(1) * unit;
        // Per input column, so the same for every row slice (and unaffected by the q/k
        // permutation, which moves whole rows).
        let weights = match imatrix {
            Some(im) => im.for_tensor(t)?,
            None => None,
        };
        let mut f16_overflow = 0usize;
        let mut row0 = 0usize;
        while row0 < n_rows.max(1) {
            crate::interrupt::check()?;
            let rows = rows_per_slice.min(n_rows.max(1) - row0);
            let n = rows * row_len;
            f32_buf.resize(n, 0.0);
            let slice_bytes = rows * row_bytes;
            match (&t.source, encoding) {
                (Source::Generated(v), _) => {
                    if v.len() != n {
                        return Err(ConvertError::NotSupported(format!(
                            "{}: generated {} values for {n} weights",
                            t.name,
                            v.len()
                        )));
                    }
                    f32_buf.copy_from_slice(v)
                }
                (Source::Checkpoint(_), enc) => {
                    let b = bytes
                        .get(row0 * row_bytes..row0 * row_bytes + slice_bytes)
                        .ok_or_else(|| ConvertError::MissingTensor {
                            name: src_name.clone(),
                        })?;
                    match (enc, src_fmt) {
                        (Encoding::Float(k), _) => widen(k, b, &mut f32_buf),
                        (Encoding::Ggml(_), Some(sf)) => {
                            dequantize_tensor(sf, b, row_len, &mut f32_buf).map_err(|source| {
                                ConvertError::Quant {
                                    name: src_name.clone(),
                                    source,
                                }
                            })?
                        }
                        (Encoding::Ggml(g), None) => {
                            return Err(ConvertError::NotSupported(format!(
                                "reading tensor type {}",
                                g.name()
                            )))
                        }
                    }
                }
            }
            let values: &[f32] = if t.permute_heads.is_some() {
                perm_buf.resize(n, 0.0);
                permute_heads(&f32_buf, &mut perm_buf, row_len, unit).map_err(|source| {
                    ConvertError::Permute {
                        name: src_name.clone(),
                        source,
                    }
                })?;
                &perm_buf
            } else {
                &f32_buf
            };
            if t.ggml_type == GgmlType::F16 {
                f16_overflow += values
                    .par_iter()
                    .filter(|x| x.abs() > 65504.0 && x.is_finite())
                    .count();
            }
            let out_len = fmt.row_size(row_len).ok_or_else(|| {
                ConvertError::NotSupported(format!("{}: row length {row_len} for {fmt:?}", t.name))
            })? * rows;
            out_buf.resize(out_len, 0);
            quantize_tensor(fmt, values, row_len, weights, &mut out_buf).map_err(|e| match e {
                QuantError::NonFinite { index, value } => ConvertError::NonFinite {
                    name: src_name.clone(),
                    index: (row0 * row_len + index) as u64,
                    value,
                },
                source => ConvertError::Quant {
                    name: t.name.clone(),
                    source,
                },
            })?;
            writer.write_tensor_data(&out_buf).map_err(split_err)?;
            let read = match t.source {
                Source::Generated(_) => (n * 4) as u64,
                Source::Checkpoint(_) => slice_bytes as u64,
            };
            stats.source_bytes += read;
            progress(Progress::Advance {
                name: &t.name,
                bytes: read,
            });
            row0 += rows;
        }
        if f16_overflow > 0 {
            stats.warnings.push(format!(
                "{src_name}: {f16_overflow} values exceed F16's range (65504) and became infinite; consider --type BF16 or F32"
            ));
        }
        progress(Progress::TensorDone { name: &t.name });
        // Reading an over-RAM model: drop our scratch between big tensors (peak stays one slice).
        if f32_buf.capacity() > SLICE_WEIGHTS {
            f32_buf = Vec::new();
            perm_buf = Vec::new();
        }
    }
    Ok(stats)
}

/// Lift a split-writer error into the conversion error.
pub(crate) fn split_err(e: super::split::SplitError) -> ConvertError {
    match e {
        super::split::SplitError::Format(f) => ConvertError::Format(f),
        other => ConvertError::Split(other),
    }
}
