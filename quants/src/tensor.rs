//! The checked, byte-level API the converter and the forward pass call.
//!
//! Every function validates lengths, block multiples and (for quantization) that the input is
//! finite before touching a kernel, then dispatches through [`crate::simd::kernels`]. Byte
//! buffers may have any alignment: an aligned buffer is reinterpreted in place, a misaligned one
//! goes through a scratch copy (same bytes, slower).
//!
//! Importance matrices follow ggml's `ggml_quantize_chunk`: used by Q4_0, Q4_1, Q5_0, Q5_1,
//! the K-quants and IQ4_NL/IQ4_XS, ignored by Q8_0 and the float formats, and refused for Q8_K (an activation
//! type ggml never quantizes with one).
//!
//! Activations for [`vec_dot`] are quantized with [`quantize_row`] to [`vec_dot_type`] first.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::block::{cast_blocks, cast_blocks_mut, Block};
use crate::simd::{kernels, Kernels};
use crate::{BlockFormat, QuantError};

/// Weights handed to one rayon task at least; small enough to spread a single 4096×4096 matrix
/// over many cores, large enough that task overhead stays invisible.
const MIN_WEIGHTS_PER_TASK: usize = 1 << 15;

/// The activation format a weight format's dot product consumes: Q8_K for the K-quants, Q8_0
/// for the legacy 32-weight formats (ggml uses Q8_1 for Q4_1/Q5_1; Q8_0 gives the same sums
/// without Q8_1's rounded block sum), F32 for the float formats (ggml uses F16/BF16 for those;
/// keeping activations in f32 is at least as accurate). Q8_K maps to itself but has no dot
/// product (it is not a weight format).
pub const fn vec_dot_type(fmt: BlockFormat) -> BlockFormat {
    match fmt {
        BlockFormat::F32 | BlockFormat::F16 | BlockFormat::BF16 => BlockFormat::F32,
        BlockFormat::Q4_0
        | BlockFormat::Q4_1
        | BlockFormat::Q5_0
        | BlockFormat::Q5_1
        | BlockFormat::Q8_0
        | BlockFormat::IQ4_NL => BlockFormat::Q8_0,
        BlockFormat::Q8_K
        | BlockFormat::Q2_K
        | BlockFormat::Q3_K
        | BlockFormat::Q4_K
        | BlockFormat::Q5_K
        | BlockFormat::Q6_K
        | BlockFormat::IQ4_XS => BlockFormat::Q8_K,
    }
}

/// Whether `fmt` uses an importance matrix when one is given (mirrors `ggml_quantize_chunk`).
pub const fn uses_imatrix(fmt: BlockFormat) -> bool {
    matches!(
        fmt,
        BlockFormat::Q4_0
            | BlockFormat::Q4_1
            | BlockFormat::Q5_0
            | BlockFormat::Q5_1
            | BlockFormat::Q2_K
            | BlockFormat::Q3_K
            | BlockFormat::Q4_K
            | BlockFormat::Q5_K
            | BlockFormat::Q6_K
            | BlockFormat::IQ4_NL
            | BlockFormat::IQ4_XS
    )
}

/// Quantizes one row `src` into `dst` (exactly `fmt.row_size(src.len())` bytes).
///
/// `imatrix`, when given, holds one importance per weight of the row (`len == src.len()`),
/// finite and non-negative. Errors: [`QuantError::RowNotBlockMultiple`],
/// [`QuantError::LengthMismatch`] (dst or imatrix), [`QuantError::NonFinite`] (index into
/// `src`), [`QuantError::BadImportance`], [`QuantError::Unsupported`] (Q8_K with an imatrix).
pub fn quantize_row(
    fmt: BlockFormat,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let row_size = checked_row_size(fmt, src.len())?;
    expect_len("bytes", row_size, dst.len())?;
    check_imatrix(fmt, imatrix, src.len())?;
    check_finite(src, 0)?;
    quantize_row_unchecked(kernels(), fmt, src, imatrix, dst);
    Ok(())
}

/// Quantizes a matrix of `src.len() / row_len` rows into `dst`, rows in parallel on the rayon
/// pool. The bytes written do not depend on the number of threads (rows are independent).
///
/// `imatrix`, when given, holds one importance per column (`len == row_len`) and applies to
/// every row, as llama.cpp's imatrix does. A non-finite input is reported with its flat index
/// (the smallest one when there are several); `dst` is then partly written and must be discarded.
pub fn quantize_tensor(
    fmt: BlockFormat,
    src: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let (rows, row_size) = check_matrix(fmt, src.len(), row_len)?;
    expect_len("bytes", rows * row_size, dst.len())?;
    check_imatrix(fmt, imatrix, row_len)?;
    if rows == 0 {
        return Ok(());
    }
    let k = kernels();
    let min_rows = (MIN_WEIGHTS_PER_TASK / row_len).max(1);
    let first_bad = dst
        .par_chunks_mut(row_size)
        .zip(src.par_chunks(row_len))
        .enumerate()
        .with_min_len(min_rows)
        .filter_map(|(r, (out, row))| {
            // Check the row while it is hot in cache; a bad row is left unwritten.
            if let Err(e) = check_finite(row, r * row_len) {
                return Some(e);
            }
            quantize_row_unchecked(k, fmt, row, imatrix, out);
            None
        })
        .min_by_key(|e| match e {
            QuantError::NonFinite { index, .. } => *index,
            _ => usize::MAX,
        });
    first_bad.map_or(Ok(()), Err)
}

/// Dequantizes one row: `src` holds `dst.len()` weights of `fmt`.
pub fn dequantize_row(fmt: BlockFormat, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let row_size = checked_row_size(fmt, dst.len())?;
    expect_len("bytes", row_size, src.len())?;
    dequantize_row_unchecked(kernels(), fmt, src, dst);
    Ok(())
}

/// Dequantizes a matrix of `dst.len() / row_len` rows from `src`, rows in parallel.
pub fn dequantize_tensor(
    fmt: BlockFormat,
    src: &[u8],
    row_len: usize,
    dst: &mut [f32],
) -> Result<(), QuantError> {
    let (rows, row_size) = check_matrix(fmt, dst.len(), row_len)?;
    expect_len("bytes", rows * row_size, src.len())?;
    if rows == 0 {
        return Ok(());
    }
    let k = kernels();
    let min_rows = (MIN_WEIGHTS_PER_TASK / row_len).max(1);
    dst.par_chunks_mut(row_len)
        .zip(src.par_chunks(row_size))
        .with_min_len(min_rows)
        .for_each(|(out, row)| dequantize_row_unchecked(k, fmt, row, out));
    Ok(())
}

/// Dot product of a weight row `w` (`n` weights of `fmt_w`) with an activation row `act`
/// (`n` values already in [`vec_dot_type`]`(fmt_w)`, e.g. produced by [`quantize_row`]).
pub fn vec_dot(fmt_w: BlockFormat, w: &[u8], act: &[u8], n: usize) -> Result<f32, QuantError> {
    let act_fmt = vec_dot_type(fmt_w);
    if fmt_w == BlockFormat::Q8_K {
        return Err(QuantError::Unsupported {
            op: "dot product with Q8_K weights",
            format: fmt_w,
        });
    }
    expect_len("weight bytes", checked_row_size(fmt_w, n)?, w.len())?;
    expect_len("activation bytes", checked_row_size(act_fmt, n)?, act.len())?;
    Ok(vec_dot_unchecked(kernels(), fmt_w, w, act))
}

/// [`quantize_row`] through an explicit kernel table, for comparing variants in tests and
/// benchmarks. Same checks.
pub fn quantize_row_with(
    k: &Kernels,
    fmt: BlockFormat,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let row_size = checked_row_size(fmt, src.len())?;
    expect_len("bytes", row_size, dst.len())?;
    check_imatrix(fmt, imatrix, src.len())?;
    check_finite(src, 0)?;
    quantize_row_unchecked(k, fmt, src, imatrix, dst);
    Ok(())
}

/// [`dequantize_row`] through an explicit kernel table. Same checks.
pub fn dequantize_row_with(
    k: &Kernels,
    fmt: BlockFormat,
    src: &[u8],
    dst: &mut [f32],
) -> Result<(), QuantError> {
    let row_size = checked_row_size(fmt, dst.len())?;
    expect_len("bytes", row_size, src.len())?;
    dequantize_row_unchecked(k, fmt, src, dst);
    Ok(())
}

/// [`vec_dot`] through an explicit kernel table. Same checks.
pub fn vec_dot_with(
    k: &Kernels,
    fmt_w: BlockFormat,
    w: &[u8],
    act: &[u8],
    n: usize,
) -> Result<f32, QuantError> {
    if fmt_w == BlockFormat::Q8_K {
        return Err(QuantError::Unsupported {
            op: "dot product with Q8_K weights",
            format: fmt_w,
        });
    }
    expect_len("weight bytes", checked_row_size(fmt_w, n)?, w.len())?;
    expect_len(
        "activation bytes",
        checked_row_size(vec_dot_type(fmt_w), n)?,
        act.len(),
    )?;
    Ok(vec_dot_unchecked(k, fmt_w, w, act))
}

// ---------------------------------------------------------------------------------------------
// Checks

fn checked_row_size(fmt: BlockFormat, len: usize) -> Result<usize, QuantError> {
    fmt.row_size(len).ok_or(QuantError::RowNotBlockMultiple {
        format: fmt,
        len,
        block: fmt.block_size(),
    })
}

fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Rows and bytes per row for a `total`-weight matrix of `row_len`-weight rows.
fn check_matrix(
    fmt: BlockFormat,
    total: usize,
    row_len: usize,
) -> Result<(usize, usize), QuantError> {
    let row_size = checked_row_size(fmt, row_len)?;
    if row_len == 0 {
        // Zero-width rows only describe an empty matrix.
        expect_len("weights", 0, total)?;
        return Ok((0, 0));
    }
    if !total.is_multiple_of(row_len) {
        return Err(QuantError::LengthMismatch {
            what: "weights (a whole number of rows)",
            expected: total - total % row_len,
            got: total,
        });
    }
    Ok((total / row_len, row_size))
}

fn check_imatrix(fmt: BlockFormat, imatrix: Option<&[f32]>, len: usize) -> Result<(), QuantError> {
    let Some(qw) = imatrix else { return Ok(()) };
    if fmt == BlockFormat::Q8_K {
        return Err(QuantError::Unsupported {
            op: "importance-weighted quantization",
            format: fmt,
        });
    }
    expect_len("importance weights", len, qw.len())?;
    if let Some((index, &value)) = qw
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(QuantError::BadImportance { index, value });
    }
    Ok(())
}

/// First NaN/inf in `x`, reported at `base + i`.
fn check_finite(x: &[f32], base: usize) -> Result<(), QuantError> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(QuantError::NonFinite {
            index: base + i,
            value: x[i],
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Byte ↔ block views

/// Calls `f` on `bytes` viewed as blocks, through an aligned copy when `bytes` is misaligned.
/// `bytes.len()` must be a whole number of `T` (callers checked it).
fn with_blocks<T: Block, R>(bytes: &[u8], f: impl FnOnce(&[T]) -> R) -> R {
    if let Some(blocks) = cast_blocks::<T>(bytes) {
        return f(blocks);
    }
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut scratch: Vec<T> = Vec::with_capacity(n);
    // SAFETY: the allocation holds n * size_of::<T>() bytes and `bytes` is at least that long
    // (callers pass whole blocks); `Block` types are valid for any bit pattern, so after the
    // copy all n elements are initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            scratch.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<T>(),
        );
        scratch.set_len(n);
    }
    f(&scratch)
}

/// Calls `f` on `bytes` viewed as mutable blocks; a misaligned buffer is written through an
/// aligned scratch copy and copied back.
fn with_blocks_mut<T: Block, R>(bytes: &mut [u8], f: impl FnOnce(&mut [T]) -> R) -> R {
    if let Some(blocks) = cast_blocks_mut::<T>(bytes) {
        return f(blocks);
    }
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    let mut scratch: Vec<T> = Vec::with_capacity(n);
    // SAFETY: as in `with_blocks`: n whole blocks are copied in, and any bit pattern is a valid T.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), scratch.as_mut_ptr().cast::<u8>(), n * size);
        scratch.set_len(n);
    }
    let r = f(&mut scratch);
    bytes[..n * size].copy_from_slice(crate::block::blocks_as_bytes(&scratch));
    r
}

// ---------------------------------------------------------------------------------------------
// Dispatch (lengths already checked)

fn quantize_row_unchecked(
    k: &Kernels,
    fmt: BlockFormat,
    src: &[f32],
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) {
    // Only the formats ggml weights by importance see the matrix.
    let qw = imatrix.filter(|_| uses_imatrix(fmt));
    macro_rules! quant {
        ($plain:ident, $weighted:ident) => {
            with_blocks_mut(dst, |y| match qw {
                Some(qw) => (k.$weighted)(src, y, qw),
                None => (k.$plain)(src, y),
            })
        };
        ($plain:ident) => {
            with_blocks_mut(dst, |y| (k.$plain)(src, y))
        };
    }
    match fmt {
        BlockFormat::F32 => with_blocks_mut::<f32, _>(dst, |y| y.copy_from_slice(src)),
        BlockFormat::F16 => with_blocks_mut::<f16, _>(dst, |y| (k.f32_to_f16_row)(src, y)),
        BlockFormat::BF16 => with_blocks_mut::<bf16, _>(dst, |y| (k.f32_to_bf16_row)(src, y)),
        BlockFormat::Q4_0 => quant!(quantize_row_q4_0, quantize_row_q4_0_imatrix),
        BlockFormat::Q4_1 => quant!(quantize_row_q4_1, quantize_row_q4_1_imatrix),
        BlockFormat::Q5_0 => quant!(quantize_row_q5_0, quantize_row_q5_0_imatrix),
        BlockFormat::Q5_1 => quant!(quantize_row_q5_1, quantize_row_q5_1_imatrix),
        BlockFormat::Q8_0 => quant!(quantize_row_q8_0),
        BlockFormat::Q8_K => quant!(quantize_row_q8_k),
        BlockFormat::Q2_K => quant!(quantize_row_q2_k, quantize_row_q2_k_imatrix),
        BlockFormat::Q3_K => quant!(quantize_row_q3_k, quantize_row_q3_k_imatrix),
        BlockFormat::Q4_K => quant!(quantize_row_q4_k, quantize_row_q4_k_imatrix),
        BlockFormat::Q5_K => quant!(quantize_row_q5_k, quantize_row_q5_k_imatrix),
        BlockFormat::Q6_K => quant!(quantize_row_q6_k, quantize_row_q6_k_imatrix),
        BlockFormat::IQ4_NL => quant!(quantize_row_iq4_nl, quantize_row_iq4_nl_imatrix),
        BlockFormat::IQ4_XS => quant!(quantize_row_iq4_xs, quantize_row_iq4_xs_imatrix),
    }
}

fn dequantize_row_unchecked(k: &Kernels, fmt: BlockFormat, src: &[u8], dst: &mut [f32]) {
    macro_rules! deq {
        ($f:ident) => {
            with_blocks(src, |x| (k.$f)(x, dst))
        };
    }
    match fmt {
        BlockFormat::F32 => with_blocks::<f32, _>(src, |x| dst.copy_from_slice(x)),
        BlockFormat::F16 => deq!(f16_to_f32_row),
        BlockFormat::BF16 => deq!(bf16_to_f32_row),
        BlockFormat::Q4_0 => deq!(dequantize_row_q4_0),
        BlockFormat::Q4_1 => deq!(dequantize_row_q4_1),
        BlockFormat::Q5_0 => deq!(dequantize_row_q5_0),
        BlockFormat::Q5_1 => deq!(dequantize_row_q5_1),
        BlockFormat::Q8_0 => deq!(dequantize_row_q8_0),
        BlockFormat::Q8_K => deq!(dequantize_row_q8_k),
        BlockFormat::Q2_K => deq!(dequantize_row_q2_k),
        BlockFormat::Q3_K => deq!(dequantize_row_q3_k),
        BlockFormat::Q4_K => deq!(dequantize_row_q4_k),
        BlockFormat::Q5_K => deq!(dequantize_row_q5_k),
        BlockFormat::Q6_K => deq!(dequantize_row_q6_k),
        BlockFormat::IQ4_NL => deq!(dequantize_row_iq4_nl),
        BlockFormat::IQ4_XS => deq!(dequantize_row_iq4_xs),
    }
}

/// `fmt_w` is not Q8_K (checked by callers).
fn vec_dot_unchecked(k: &Kernels, fmt_w: BlockFormat, w: &[u8], act: &[u8]) -> f32 {
    macro_rules! dot {
        ($f:ident) => {
            with_blocks(w, |x| with_blocks(act, |y| (k.$f)(x, y)))
        };
    }
    match fmt_w {
        BlockFormat::F32 => dot!(vec_dot_f32),
        BlockFormat::F16 => dot!(vec_dot_f16_f32),
        BlockFormat::BF16 => dot!(vec_dot_bf16_f32),
        BlockFormat::Q4_0 => dot!(vec_dot_q4_0_q8_0),
        BlockFormat::Q4_1 => dot!(vec_dot_q4_1_q8_0),
        BlockFormat::Q5_0 => dot!(vec_dot_q5_0_q8_0),
        BlockFormat::Q5_1 => dot!(vec_dot_q5_1_q8_0),
        BlockFormat::Q8_0 => dot!(vec_dot_q8_0_q8_0),
        BlockFormat::Q2_K => dot!(vec_dot_q2_k_q8_k),
        BlockFormat::Q3_K => dot!(vec_dot_q3_k_q8_k),
        BlockFormat::Q4_K => dot!(vec_dot_q4_k_q8_k),
        BlockFormat::Q5_K => dot!(vec_dot_q5_k_q8_k),
        BlockFormat::Q6_K => dot!(vec_dot_q6_k_q8_k),
        BlockFormat::IQ4_NL => dot!(vec_dot_iq4_nl_q8_0),
        BlockFormat::IQ4_XS => dot!(vec_dot_iq4_xs_q8_k),
        // Unreachable through the public API; an empty dot is the harmless answer.
        BlockFormat::Q8_K => 0.0,
    }
}
