//! Matrix products of stored-type weights with activations quantized per row, as ggml's
//! `ggml_compute_forward_mul_mat` does: each activation row is converted once to the weight
//! type's "vec-dot type" (Q8_0 for the 32-wide formats, Q8_K for K-quants, the float type itself
//! for float weights), then every output is one row·row dot product in that pairing.
//!
//! Parallel layout: for a batch of tokens the work is cut into token tiles (one rayon task each);
//! a task walks the weight matrix in blocks of [`ROW_BLOCK`] rows and, for each block, runs every
//! token of its tile against it, so a block of weights is read from memory once per tile and then
//! served from L1 while the tile's activations stay in L2. Single tokens are split over rows.
use super::weights::{Weight, WeightData};
use half::{bf16, f16};
use longquant_quants::block::{
    float, q4_0, q4_1, q4_k, q8_0, q8_0::BlockQ8_0, q8_k, q8_k::BlockQ8K,
};
use longquant_quants::QK_K;
use rayon::prelude::*;

/// Weight rows per inner block: 16 rows of a 4096-wide Q4_K matrix are 36 KiB, about L1 size.
const ROW_BLOCK: usize = 16;
/// Most tokens per task.
const MAX_TILE: usize = 64;

/// The activation encoding a weight type is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    /// Q8_0 codes plus ggml's Q8_1 block sum `s = f16(d·Σq)` (with the unrounded f32 `d`).
    Q8_1,
    Q8K,
}

pub(crate) fn act_format(w: &Weight<'_>) -> ActFormat {
    match w.data {
        WeightData::F32(_) => ActFormat::F32,
        WeightData::F16(_) => ActFormat::F16,
        WeightData::BF16(_) => ActFormat::BF16,
        WeightData::Q4_0(_) | WeightData::Q8_0(_) => ActFormat::Q8_0,
        WeightData::Q4_1(_) => ActFormat::Q8_1,
        WeightData::Q4K(_) => ActFormat::Q8K,
    }
}

/// Activation rows of `cols` values, converted to one [`ActFormat`].
pub(crate) enum Acts {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    Q8K(Vec<BlockQ8K>),
}

/// ggml's `block_q8_1` in computational form: Q8_0 codes and scale, and `s = f16(d·Σq)`.
#[derive(Clone, Copy)]
pub(crate) struct BlockQ8_1 {
    q: BlockQ8_0,
    s: f32,
}

/// Converts `n_tok` rows of `cols` f32 values (`x.len() == n_tok * cols`) to `fmt`. The caller
/// guarantees `cols` is a multiple of the format's block size (checked when weights load).
pub(crate) fn quantize_acts(fmt: ActFormat, x: &[f32], cols: usize) -> Acts {
    match fmt {
        ActFormat::F32 => Acts::F32(x.to_vec()),
        ActFormat::F16 => {
            let mut y = vec![f16::ZERO; x.len()];
            y.par_chunks_mut(cols)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| float::f32_to_f16_row(x, y));
            Acts::F16(y)
        }
        ActFormat::BF16 => {
            let mut y = vec![bf16::ZERO; x.len()];
            y.par_chunks_mut(cols)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| float::f32_to_bf16_row(x, y));
            Acts::BF16(y)
        }
        ActFormat::Q8_0 => {
            let bpr = cols / q8_0::QK8_0;
            let mut y = vec![BlockQ8_0::ZERO; x.len() / q8_0::QK8_0];
            y.par_chunks_mut(bpr)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| q8_0::quantize_row_q8_0(x, y));
            Acts::Q8_0(y)
        }
        ActFormat::Q8_1 => {
            let bpr = cols / q8_0::QK8_0;
            let zero = BlockQ8_1 {
                q: BlockQ8_0::ZERO,
                s: 0.0,
            };
            let mut y = vec![zero; x.len() / q8_0::QK8_0];
            let mut tmp = vec![BlockQ8_0::ZERO; bpr];
            y.par_chunks_mut(bpr).zip(x.par_chunks(cols)).for_each_with(
                tmp.clone(),
                |tmp, (y, x)| {
                    q8_0::quantize_row_q8_0(x, tmp);
                    for ((yb, qb), xb) in y
                        .iter_mut()
                        .zip(tmp.iter())
                        .zip(x.chunks_exact(q8_0::QK8_0))
                    {
                        // ggml quantize_row_q8_1: s uses the f32 scale before it is rounded to f16.
                        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let sum: i32 = qb.qs.iter().map(|&q| q as i32).sum();
                        let s = float::f16_to_f32(float::f32_to_f16(sum as f32 * (amax / 127.0)));
                        *yb = BlockQ8_1 { q: *qb, s };
                    }
                },
            );
            tmp.clear();
            Acts::Q8_1(y)
        }
        ActFormat::Q8K => {
            let bpr = cols / QK_K;
            let mut y = vec![BlockQ8K::default(); x.len() / QK_K];
            y.par_chunks_mut(bpr)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| q8_k::quantize_row_q8_k_ref(x, y));
            Acts::Q8K(y)
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
        matmul(w, &self.made[idx].1, n_tok, out);
    }
}

/// `out[t * w.rows + r] = w[r] · a[t]`. `acts` must be in [`act_format`]`(w)` with `w.cols` per row.
pub(crate) fn matmul(w: &Weight<'_>, acts: &Acts, n_tok: usize, out: &mut [f32]) {
    let rows = w.rows;
    let bpr = w.blocks_per_row();
    match (w.data, acts) {
        (WeightData::F32(wd), Acts::F32(a)) => mm(wd, bpr, a, w.cols, n_tok, rows, out, dot_f32),
        (WeightData::F16(wd), Acts::F16(a)) => {
            mm(wd, bpr, a, w.cols, n_tok, rows, out, dot_f16_f16)
        }
        (WeightData::BF16(wd), Acts::BF16(a)) => {
            mm(wd, bpr, a, w.cols, n_tok, rows, out, dot_bf16_bf16)
        }
        (WeightData::Q4_0(wd), Acts::Q8_0(a)) => mm(wd, bpr, a, bpr, n_tok, rows, out, |x, y| {
            q4_0::vec_dot_q4_0_q8_0_ref(x, y)
        }),
        (WeightData::Q4_1(wd), Acts::Q8_1(a)) => {
            mm(wd, bpr, a, bpr, n_tok, rows, out, vec_dot_q4_1_q8_1)
        }
        (WeightData::Q8_0(wd), Acts::Q8_0(a)) => mm(wd, bpr, a, bpr, n_tok, rows, out, |x, y| {
            q8_0::vec_dot_q8_0_q8_0_ref(x, y)
        }),
        (WeightData::Q4K(wd), Acts::Q8K(a)) => mm(wd, bpr, a, bpr, n_tok, rows, out, |x, y| {
            q4_k::vec_dot_q4_k_q8_k_ref(x, y)
        }),
        // ActCache picks the format from the weight, so other pairings cannot be constructed.
        _ => unreachable!("activation format does not match the weight type"),
    }
}

#[allow(clippy::too_many_arguments)]
fn mm<W: Sync, A: Sync>(
    w: &[W],
    wbpr: usize,
    a: &[A],
    abpr: usize,
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
    dot: impl Fn(&[W], &[A]) -> f32 + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    if n_tok >= 2 * threads {
        // Enough tokens: tile over tokens (outputs of a tile are contiguous).
        let tile = n_tok.div_ceil(4 * threads).clamp(1, MAX_TILE);
        out.par_chunks_mut(tile * rows)
            .enumerate()
            .for_each(|(ti, o)| {
                let t0 = ti * tile;
                let nt = o.len() / rows;
                for r0 in (0..rows).step_by(ROW_BLOCK) {
                    let r1 = (r0 + ROW_BLOCK).min(rows);
                    for t in 0..nt {
                        let at = &a[(t0 + t) * abpr..(t0 + t + 1) * abpr];
                        let ot = &mut o[t * rows..(t + 1) * rows];
                        for r in r0..r1 {
                            ot[r] = dot(&w[r * wbpr..(r + 1) * wbpr], at);
                        }
                    }
                }
            });
    } else {
        // Few tokens: split each token's outputs over rows.
        for (t, ot) in out.chunks_mut(rows).enumerate().take(n_tok) {
            let at = &a[t * abpr..(t + 1) * abpr];
            ot.par_chunks_mut(ROW_BLOCK * 4)
                .enumerate()
                .for_each(|(bi, o)| {
                    let r0 = bi * ROW_BLOCK * 4;
                    for (i, v) in o.iter_mut().enumerate() {
                        let r = r0 + i;
                        *v = dot(&w[r * wbpr..(r + 1) * wbpr], at);
                    }
                });
        }
    }
}

/// f32 dot product with eight independent partial sums (vectorizable; also the accuracy ggml's
/// SIMD `ggml_vec_dot_f32` has).
#[inline]
pub(crate) fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f32; 8];
    let mut xc = x.chunks_exact(8);
    let mut yc = y.chunks_exact(8);
    for (a, b) in (&mut xc).zip(&mut yc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    let mut s = 0.0f32;
    for (a, b) in xc.remainder().iter().zip(yc.remainder()) {
        s += a * b;
    }
    let t = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    s + (t[0] + t[2]) + (t[1] + t[3])
}

/// ggml's `ggml_vec_dot_q4_1_q8_1`: `Σ d_x·d_y·Σ q_x q_y + m_x·s_y`. Keeping Q8_1's f16-rounded
/// block sum matters for agreement: the min term and the code term nearly cancel, so the f16
/// rounding of `s` moves logits by ~1e-2 on SmolLM2.
// TODO(quants): move beside vec_dot_q4_1_q8_0_ref with SIMD versions.
fn vec_dot_q4_1_q8_1(x: &[q4_1::BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (j, &q) in xb.qs.iter().enumerate() {
            sumi += (q & 0x0f) as i32 * yb.q.qs[j] as i32;
            sumi += (q >> 4) as i32 * yb.q.qs[j + 16] as i32;
        }
        let dd = float::f16_to_f32(xb.d) * float::f16_to_f32(yb.q.d);
        sumf += dd * sumi as f32 + float::f16_to_f32(xb.m) * yb.s;
    }
    sumf
}

fn dot_f16_f16(x: &[f16], y: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.chunks(8).zip(y.chunks(8)) {
        for (k, (p, q)) in a.iter().zip(b).enumerate() {
            acc[k] += p.to_f32() * q.to_f32();
        }
    }
    acc.iter().sum()
}

fn dot_bf16_bf16(x: &[bf16], y: &[bf16]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (a, b) in x.chunks(8).zip(y.chunks(8)) {
        for (k, (p, q)) in a.iter().zip(b).enumerate() {
            acc[k] += p.to_f32() * q.to_f32();
        }
    }
    acc.iter().sum()
}
