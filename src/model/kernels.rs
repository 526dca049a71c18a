//! Matrix products of stored-type weights with activations quantized per row, as ggml's
//! `ggml_compute_forward_mul_mat` does: each activation row is converted once to the weight
//! type's "vec-dot type" (Q8_0 for the 32-wide formats, Q8_1 for Q4_1/Q5_1, Q8_K for K-quants,
//! the float type itself for float weights), then every output is one row·row dot product in
//! that pairing. Every dot and every activation quantizer goes through the quants crate's
//! run-time kernel table ([`longquant_quants::simd::kernels`]: AVX2 where the CPU has it).
//!
//! Parallel layout: every product goes through [`super::schedule`], which cuts it into output-row
//! × token-tile tasks from the shapes and the thread count; the per-format modules supply only
//! the tile kernels.
use super::schedule::{self, Shape, ROW_BLOCK};
use super::weights::{Weight, WeightData};
use super::{mm_float, mm_kquant, mm_legacy};
use longquant_quants::block::{
    float, nearest_int, q8_0, q8_0::BlockQ8_0, q8_1, q8_1::BlockQ8_1, q8_k::BlockQ8K,
};
use longquant_quants::simd::{kernels, Kernels};
use longquant_quants::QK_K;
use rayon::prelude::*;

/// The activation encoding a weight type is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    /// f32 as is (F32 weights).
    F32,
    /// f32 rounded through f16 (ggml converts activations to F16 for F16 weights).
    F16Round,
    /// f32 rounded through bf16 (ditto for BF16).
    BF16Round,
    /// Q8_0 (Q4_0, Q5_0, Q8_0 weights).
    Q8_0,
    /// ggml's Q8_1 (Q4_1, Q5_1 weights): Q8_0 codes plus the f16-rounded block sum.
    Q8_1,
    /// Q8_K (K-quants).
    Q8K,
}

pub(crate) fn act_format(w: &Weight<'_>) -> ActFormat {
    match w.data {
        WeightData::F32(_) => ActFormat::F32,
        WeightData::F16(_) => ActFormat::F16Round,
        WeightData::BF16(_) => ActFormat::BF16Round,
        WeightData::Q4_0(_) | WeightData::Q5_0(_) | WeightData::Q8_0(_) => ActFormat::Q8_0,
        WeightData::IQ4NL(_) => ActFormat::Q8_0,
        WeightData::Q4_1(_) | WeightData::Q5_1(_) => ActFormat::Q8_1,
        WeightData::Q4K(_) | WeightData::Q5K(_) | WeightData::Q6K(_) => ActFormat::Q8K,
        WeightData::Q2K(_) | WeightData::Q3K(_) | WeightData::IQ4XS(_) => ActFormat::Q8K,
    }
}

/// Activation rows of `cols` values, converted to one [`ActFormat`].
pub(crate) enum Acts {
    /// f32 rows (possibly rounded through f16/bf16).
    F32(Vec<f32>),
    /// Q8_0 rows.
    Q8_0(Vec<BlockQ8_0>),
    /// Q8_1 rows. Their block sum `s = f16(d_f32·Σq)` differs from `f16(d)·Σq`, and the
    /// weights' min term and code term nearly cancel, so that rounding moves SmolLM2's logits
    /// by ~1e-2: Q8_1, not Q8_0, is what agrees with llama.cpp for Q4_1/Q5_1 weights.
    Q8_1(Vec<BlockQ8_1>),
    /// Q8_K rows.
    Q8K(Vec<BlockQ8K>),
}

/// Converts `n_tok` rows of `cols` f32 values (`x.len() == n_tok * cols`) to `fmt`. The caller
/// guarantees `cols` is a multiple of the format's block size (checked when weights load).
pub(crate) fn quantize_acts(fmt: ActFormat, x: &[f32], cols: usize) -> Acts {
    let k = kernels();
    match fmt {
        ActFormat::F32 => Acts::F32(x.to_vec()),
        ActFormat::F16Round => {
            let mut y = x.to_vec();
            y.par_chunks_mut(cols).for_each(|r| {
                for v in r.iter_mut() {
                    *v = float::f16_to_f32(float::f32_to_f16(*v));
                }
            });
            Acts::F32(y)
        }
        ActFormat::BF16Round => {
            let mut y = x.to_vec();
            y.par_chunks_mut(cols).for_each(|r| {
                for v in r.iter_mut() {
                    *v = float::bf16_to_f32(float::f32_to_bf16(*v));
                }
            });
            Acts::F32(y)
        }
        ActFormat::Q8_0 => {
            let bpr = cols / q8_0::QK8_0;
            let mut y = vec![BlockQ8_0::ZERO; x.len() / q8_0::QK8_0];
            y.par_chunks_mut(bpr)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| quantize_row_q8_0_x86(x, y));
            Acts::Q8_0(y)
        }
        ActFormat::Q8_1 => {
            let bpr = cols / q8_1::QK8_1;
            let mut y = vec![BlockQ8_1::ZERO; x.len() / q8_1::QK8_1];
            y.par_chunks_mut(bpr)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| (k.quantize_row_q8_1)(x, y));
            Acts::Q8_1(y)
        }
        ActFormat::Q8K => {
            let bpr = cols / QK_K;
            let mut y = vec![BlockQ8K::default(); x.len() / QK_K];
            y.par_chunks_mut(bpr)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| (k.quantize_row_q8_k)(x, y));
            Acts::Q8K(y)
        }
    }
}

/// Q8_0 activations exactly as llama.cpp's CPU backend makes them on x86 (`quantize_row_q8_0`
/// in `ggml-cpu/arch/x86/quants.c`): multiplier `127 / amax` and rounding half to even. The
/// quants crate's quantizer follows the portable `quantize_row_q8_0_ref` (`1 / d`, `roundf`),
/// which is right for weights (file bytes) but differs on a few activations per row; Q8_0
/// models are sensitive enough to that to move perplexity by ~0.2 % (SmolLM2), so the forward
/// pass uses ggml's run-time rule.
pub(crate) fn quantize_row_q8_0_x86(x: &[f32], y: &mut [BlockQ8_0]) {
    for (xb, yb) in x.chunks_exact(q8_0::QK8_0).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        yb.d = float::f32_to_f16(amax / 127.0);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            // |v·id| ≤ 127 up to one ulp, so the clamp only guards that ulp.
            *q = nearest_int(v * id).clamp(-127, 127) as i8;
        }
    }
}

/// Quantized copies of one activation matrix, made on first use per format, so Q, K and V (or
/// gate and up) share one conversion as in ggml.
pub(crate) struct ActCache<'x> {
    x: &'x [f32],
    cols: usize,
    made: Vec<(ActFormat, Acts)>,
}

impl<'x> ActCache<'x> {
    pub(crate) fn new(x: &'x [f32], cols: usize) -> Self {
        Self {
            x,
            cols,
            made: Vec::new(),
        }
    }

    /// `out[t * w.rows + r] = w[r] · x[t]` for every token `t` and row `r`.
    pub(crate) fn matmul(&mut self, w: &Weight<'_>, out: &mut [f32]) {
        let fmt = act_format(w);
        let idx = match self.made.iter().position(|(f, _)| *f == fmt) {
            Some(i) => i,
            None => {
                self.made.push((fmt, quantize_acts(fmt, self.x, self.cols)));
                self.made.len() - 1
            }
        };
        let n_tok = self.x.len() / self.cols;
        matmul(kernels(), w, &self.made[idx].1, n_tok, out);
    }
}

/// `out[t * w.rows + r] = w[r] · a[t]`. `acts` must be in [`act_format`]`(w)` with `w.cols` per row.
pub(crate) fn matmul(k: &Kernels, w: &Weight<'_>, acts: &Acts, n_tok: usize, out: &mut [f32]) {
    let rows = w.rows;
    let bpr = w.blocks_per_row();
    let cols = w.cols;
    match (w.data, acts) {
        (WeightData::F32(wd), Acts::F32(a)) => {
            mm_float::matmul_f32(k, wd, cols, a, n_tok, rows, out)
        }
        (WeightData::F16(wd), Acts::F32(a)) => {
            mm_float::matmul_f16(k, wd, cols, a, n_tok, rows, out)
        }
        (WeightData::BF16(wd), Acts::F32(a)) => {
            mm_float::matmul_bf16(k, wd, cols, a, n_tok, rows, out)
        }
        (WeightData::Q4_0(wd), Acts::Q8_0(a)) => {
            mm_legacy::matmul_q4_0(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q5_0(wd), Acts::Q8_0(a)) => {
            mm_legacy::matmul_q5_0(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q8_0(wd), Acts::Q8_0(a)) => {
            mm_legacy::matmul_q8_0(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q4_1(wd), Acts::Q8_1(a)) => {
            mm_legacy::matmul_q4_1(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q5_1(wd), Acts::Q8_1(a)) => {
            mm_legacy::matmul_q5_1(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q4K(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_q4k(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q5K(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_q5k(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q6K(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_q6k(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q2K(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_q2k(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::Q3K(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_q3k(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::IQ4XS(wd), Acts::Q8K(a)) => {
            mm_kquant::matmul_iq4xs(k, wd, bpr, a, n_tok, rows, out)
        }
        (WeightData::IQ4NL(wd), Acts::Q8_0(a)) => {
            mm_kquant::matmul_iq4nl(k, wd, bpr, a, n_tok, rows, out)
        }
        // ActCache picks the format from the weight, so other pairings cannot be constructed.
        _ => unreachable!("activation format does not match the weight type"),
    }
}

/// The row-dot product through the scheduler: `dot(w_row, t)` is one weight row (`wbpr`
/// elements) against token `t`'s activations (`act_bytes` per token). The generic fallback of the
/// per-format modules (`mm_float`, `mm_legacy`, `mm_kquant`) where no tile kernel runs.
pub(crate) fn mm<W: Sync>(
    w: &[W],
    wbpr: usize,
    n_tok: usize,
    rows: usize,
    act_bytes: usize,
    out: &mut [f32],
    dot: impl Fn(&[W], usize) -> f32 + Sync,
) {
    let shape = Shape {
        rows,
        n_tok,
        act_bytes,
        tok_align: 1,
    };
    schedule::run(&shape, out, |task, o, stride| {
        // A block of rows meets every token of the task while it sits in L1.
        for b0 in (task.r0..task.r1).step_by(ROW_BLOCK) {
            let b1 = (b0 + ROW_BLOCK).min(task.r1);
            for t in 0..task.nt {
                for r in b0..b1 {
                    o[t * stride + r - task.r0] = dot(&w[r * wbpr..(r + 1) * wbpr], task.t0 + t);
                }
            }
        }
    })
}

/// A register-tiled Q8_0·Q8_0 product for AVX2: each weight block is loaded and made unsigned
/// once and multiplied against [`q8x::NT`] tokens' activation blocks, so the weight stream costs
/// a quarter of what row-by-row dot products cost (ggml gets the same effect from llamafile's
/// tinyBLAS). Every token's sum is accumulated in the same order whatever the tile width, so
/// one token alone (decoding) gives bit-identical results to a batch.
#[cfg(target_arch = "x86_64")]
pub(crate) mod q8x {
    use super::BlockQ8_0;
    use std::arch::x86_64::*;

    /// Tokens per inner call.
    pub(crate) const NT: usize = 4;

    pub(crate) fn available() -> bool {
        longquant_quants::simd::cpu::features().avx2_fma_f16c()
    }

    /// `out[t][r] = w[r] · a[t]` for tokens `t0..t0 + N` (N ≤ NT) of one weight row.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `a` holds `t0 + N` rows of `w.len()` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_dot<const N: usize>(w: &[BlockQ8_0], a: &[BlockQ8_0], t0: usize) -> [f32; N] {
        let nb = w.len();
        let a = &a[t0 * nb..(t0 + N) * nb];
        // SAFETY: register work plus loads from blocks inside the slices above; AVX2 (caller).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let ones = _mm256_set1_epi16(1);
            for (b, wb) in w.iter().enumerate() {
                let wq = _mm256_loadu_si256(wb.qs.as_ptr().cast());
                // |w| as unsigned bytes (−128 becomes 128), and y takes w's sign: the products
                // are w·y exactly and a maddubs pair is at most 2·128·127 (no saturation,
                // because activations are clamped to ±127).
                let wa = _mm256_sign_epi8(wq, wq);
                let wd = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(wb.d.to_bits() as i32)));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let ab = &a[t * nb + b];
                    let yq = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                    let ys = _mm256_sign_epi8(yq, wq);
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, ys), ones);
                    let ad = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(ab.d.to_bits() as i32)));
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(wd * ad), _mm256_cvtepi32_ps(dot), *acc);
                }
            }
            let mut out = [0.0f32; N];
            for (o, v) in out.iter_mut().zip(acc) {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                *o = _mm_cvtss_f32(s);
            }
            out
        }
    }

    /// One row against one token: the bits every Q8_0 matmul path produces (tests compare).
    #[cfg(test)]
    pub(crate) fn dot(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
        assert!(available() && w.len() == a.len());
        // SAFETY: features checked above; `a` holds one row of `w.len()` blocks.
        let [x] = unsafe { row_dot::<1>(w, a, 0) };
        x
    }

    /// Rows `r0..r1` of tokens `t0..t0 + nt` into `o` (token-major, `stride` per token, row
    /// `r` of token `t` at `t·stride + r − r0`). Call only when [`available`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tile(
        w: &[BlockQ8_0],
        bpr: usize,
        a: &[BlockQ8_0],
        t0: usize,
        nt: usize,
        stride: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
    ) {
        assert!(available(), "q8x tile: AVX2/FMA/F16C not available");
        for r in r0..r1 {
            let wr = &w[r * bpr..(r + 1) * bpr];
            let mut t = 0;
            while t + NT <= nt {
                // SAFETY: `available()` was asserted above.
                let v = unsafe { row_dot::<NT>(wr, a, t0 + t) };
                for (i, x) in v.into_iter().enumerate() {
                    o[(t + i) * stride + r - r0] = x;
                }
                t += NT;
            }
            while t < nt {
                // SAFETY: as above.
                let [x] = unsafe { row_dot::<1>(wr, a, t0 + t) };
                o[t * stride + r - r0] = x;
                t += 1;
            }
        }
    }
}
