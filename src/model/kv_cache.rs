//! K/V cache types and the attention llama.cpp's CPU backend runs for them when flash attention
//! is on and the cache is not a same-type F16/F32 pair (issue 17): its per-query kernel
//! `ggml_compute_forward_flash_attn_ext_f16_one_chunk` (ggml-cpu/ops.cpp), with the Walsh–Hadamard
//! rotation llama.cpp's KV cache applies around quantized K and V.
//!
//! What llama.cpp computes, and this module reproduces, for one query row (head `h`, position
//! `i`; KV head `h / group`):
//! - storing: K and V rows go into the cache through `set_rows`, i.e. the CPU `from_float` of the
//!   cache type (Q8_0: the x86 activation quantizer, `127/amax` and round-half-even; Q4_0, Q4_1,
//!   Q5_0, Q5_1: the reference quantizers; IQ4_NL: `quantize_row_iq4_nl_ref`, the search with no
//!   trial scales, unlike llama-quantize's; F16: F16C rounding; BF16: round-to-nearest-even);
//! - rotation (`llama_kv_cache`, `attn_rot_k`/`attn_rot_v`): when K's type is quantized and the
//!   head size is a multiple of 64, Q and K are multiplied by an orthonormal Sylvester–Hadamard
//!   matrix of size `nrot` (the largest power of two ≥ 64 dividing the head size) on every
//!   `nrot`-wide piece before K is stored; when V's type is quantized (same condition), V is
//!   rotated by the 64-wide matrix before it is stored and the attention output is rotated back
//!   (the matrix is its own inverse); `LLAMA_ATTN_ROT_DISABLE=1` turns both off, as in llama.cpp.
//!   ggml's CPU `mul_mat` with the Hadamard hint runs a fast
//!   Walsh–Hadamard transform: scale by `1/sqrtf(n)` first, then butterflies `(u + v, u − v)` of
//!   widths 1, 2, 4, … (its SIMD passes compute `u − v` as `fma(v, −1, u)`, the same value);
//! - the query is converted once to K's `vec_dot_type` (Q8_0 for Q8_0/Q4_0/Q5_0/IQ4_NL, Q8_1 for
//!   Q4_1/Q5_1, the float type itself for F16/BF16/F32);
//! - then for every visible key in order (masked keys are skipped): `s = vec_dot(K, q)·scale`,
//!   the dot in ggml's AVX2 lane order (see `lane_dot`);
//!   if `s > M`: `M = s`, `ms = expf(M_old − M)` and the accumulator is scaled by `ms`; else
//!   `vs = expf(s − M)`; the accumulator gets `V·vs` (`fma(v, vs, acc)` per lane); and
//!   `S = fma(S, ms, vs)` (GCC contracts `S*ms + vs` with FMA on);
//! - the accumulator is f16 when V is F16 (`ggml_vec_mad_f16`/`ggml_vec_scale_f16`: each step
//!   widens, computes in f32 and rounds back to f16) and f32 otherwise (V rows widened by the
//!   type's reference `to_float`); at the end it is widened to f32 and scaled by `1/S`.
//!
//! The same-type F16 and F32 caches keep the blocked kernel of [`super::forward`] (llama.cpp's
//! tiled flash attention, which it takes for those pairs). llama.cpp casts an F32 K or V to F16
//! before flash attention, so its `-ctk f32 -ctv f32` computes what its F16 cache computes; ours
//! keeps the F32 pair in f32 (the full-precision mode `--kv-type f32` always was), and an F32
//! half of a mixed pair is cast to F16 as llama.cpp does.
use half::{bf16, f16};
use longquant_quants::block::iq4_nl::{self, BlockIQ4NL};
use longquant_quants::block::q4_0::BlockQ4_0;
use longquant_quants::block::q4_1::BlockQ4_1;
use longquant_quants::block::q5_0::BlockQ5_0;
use longquant_quants::block::q5_1::BlockQ5_1;
use longquant_quants::block::q8_0::BlockQ8_0;
use longquant_quants::block::q8_1::BlockQ8_1;
use longquant_quants::simd::kernels;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// The element type of the K or V cache (llama.cpp's `--cache-type-k`/`--cache-type-v`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum KvType {
    /// Full precision.
    F32,
    /// IEEE half, llama.cpp's default.
    #[default]
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 5-bit blocks of 32 with a minimum.
    Q5_1,
    /// 5-bit blocks of 32.
    Q5_0,
    /// 4-bit blocks of 32 with a minimum.
    Q4_1,
    /// 4-bit blocks of 32.
    Q4_0,
    /// 4-bit non-linear blocks of 32.
    IQ4_NL,
}

impl KvType {
    /// Every type, in llama.cpp's order of its `--cache-type-k` help.
    pub const ALL: [KvType; 9] = [
        KvType::F32,
        KvType::F16,
        KvType::BF16,
        KvType::Q8_0,
        KvType::Q4_0,
        KvType::Q4_1,
        KvType::IQ4_NL,
        KvType::Q5_0,
        KvType::Q5_1,
    ];

    /// llama.cpp's name (`f16`, `q8_0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::BF16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q5_1 => "q5_1",
            KvType::Q5_0 => "q5_0",
            KvType::Q4_1 => "q4_1",
            KvType::Q4_0 => "q4_0",
            KvType::IQ4_NL => "iq4_nl",
        }
    }

    /// Whether the type is a block-quantized one (these get llama.cpp's Hadamard rotation).
    pub fn is_quantized(self) -> bool {
        !matches!(self, KvType::F32 | KvType::F16 | KvType::BF16)
    }

    /// Values per block (1 for the float types).
    pub fn block_size(self) -> usize {
        if self.is_quantized() {
            32
        } else {
            1
        }
    }

    /// The valid names, comma-separated (for error messages and help).
    pub fn valid_names() -> String {
        KvType::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown cache type `{s}`; valid types: {}",
                    KvType::valid_names()
                )
            })
    }
}

/// Rows of one cache half (K or V) in its type: row `p·n_head_kv + g` is position `p`, KV head
/// `g`, `head_dim` values (`head_dim / 32` blocks for the quantized types).
#[derive(Debug)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q5_1(Vec<BlockQ5_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q4_0(Vec<BlockQ4_0>),
    IQ4NL(Vec<BlockIQ4NL>),
}

/// Appends `x` (whole rows) to `v` converted by `f`, `bs` values per element of `v`.
fn append<B: Copy>(v: &mut Vec<B>, x: &[f32], bs: usize, zero: B, f: impl Fn(&[f32], &mut [B])) {
    let at = v.len();
    v.resize(at + x.len() / bs, zero);
    f(x, &mut v[at..]);
}

impl Rows {
    fn new(t: KvType) -> Self {
        match t {
            KvType::F32 => Rows::F32(Vec::new()),
            KvType::F16 => Rows::F16(Vec::new()),
            KvType::BF16 => Rows::BF16(Vec::new()),
            KvType::Q8_0 => Rows::Q8_0(Vec::new()),
            KvType::Q5_1 => Rows::Q5_1(Vec::new()),
            KvType::Q5_0 => Rows::Q5_0(Vec::new()),
            KvType::Q4_1 => Rows::Q4_1(Vec::new()),
            KvType::Q4_0 => Rows::Q4_0(Vec::new()),
            KvType::IQ4_NL => Rows::IQ4NL(Vec::new()),
        }
    }

    fn clear(&mut self) {
        match self {
            Rows::F32(v) => v.clear(),
            Rows::F16(v) => v.clear(),
            Rows::BF16(v) => v.clear(),
            Rows::Q8_0(v) => v.clear(),
            Rows::Q5_1(v) => v.clear(),
            Rows::Q5_0(v) => v.clear(),
            Rows::Q4_1(v) => v.clear(),
            Rows::Q4_0(v) => v.clear(),
            Rows::IQ4NL(v) => v.clear(),
        }
    }

    /// Appends rows of f32 values, converted as ggml's CPU `set_rows` converts them.
    fn push(&mut self, x: &[f32]) {
        let k = kernels();
        match self {
            Rows::F32(v) => v.extend_from_slice(x),
            Rows::F16(v) => append(v, x, 1, f16::ZERO, k.f32_to_f16_row),
            Rows::BF16(v) => append(v, x, 1, bf16::ZERO, k.f32_to_bf16_row),
            Rows::Q8_0(v) => append(v, x, 32, BlockQ8_0::ZERO, |x, y| {
                x.par_chunks(32 * 64)
                    .zip(y.par_chunks_mut(64))
                    .for_each(|(x, y)| super::kernels::quantize_row_q8_0_x86(x, y))
            }),
            Rows::Q5_1(v) => append(v, x, 32, BlockQ5_1::ZERO, k.quantize_row_q5_1),
            Rows::Q5_0(v) => append(v, x, 32, BlockQ5_0::ZERO, k.quantize_row_q5_0),
            Rows::Q4_1(v) => append(v, x, 32, BlockQ4_1::ZERO, k.quantize_row_q4_1),
            Rows::Q4_0(v) => append(v, x, 32, BlockQ4_0::ZERO, k.quantize_row_q4_0),
            Rows::IQ4NL(v) => append(v, x, 32, BlockIQ4NL::default(), |x, y| {
                x.par_chunks(32 * 64)
                    .zip(y.par_chunks_mut(64))
                    .for_each(|(x, y)| iq4_nl::quantize_row_iq4_nl_ref(x, y))
            }),
        }
    }

    /// Widens rows `r0..r0 + y.len() / width` to f32 (the type's reference `to_float`).
    fn to_f32(&self, r0: usize, width: usize, y: &mut [f32]) {
        let k = kernels();
        let (a, n) = (r0 * width, y.len());
        match self {
            Rows::F32(v) => y.copy_from_slice(&v[a..a + n]),
            Rows::F16(v) => (k.f16_to_f32_row)(&v[a..a + n], y),
            Rows::BF16(v) => (k.bf16_to_f32_row)(&v[a..a + n], y),
            Rows::Q8_0(v) => (k.dequantize_row_q8_0)(&v[a / 32..(a + n) / 32], y),
            Rows::Q5_1(v) => (k.dequantize_row_q5_1)(&v[a / 32..(a + n) / 32], y),
            Rows::Q5_0(v) => (k.dequantize_row_q5_0)(&v[a / 32..(a + n) / 32], y),
            Rows::Q4_1(v) => (k.dequantize_row_q4_1)(&v[a / 32..(a + n) / 32], y),
            Rows::Q4_0(v) => (k.dequantize_row_q4_0)(&v[a / 32..(a + n) / 32], y),
            Rows::IQ4NL(v) => (k.dequantize_row_iq4_nl)(&v[a / 32..(a + n) / 32], y),
        }
    }
}

/// A query row converted to K's `vec_dot_type`.
enum QConv {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
}

impl QConv {
    fn new(kt: KvType, hd: usize) -> Self {
        match kt {
            KvType::F32 => QConv::F32(vec![0.0; hd]),
            KvType::F16 => QConv::F16(vec![f16::ZERO; hd]),
            KvType::BF16 => QConv::BF16(vec![bf16::ZERO; hd]),
            KvType::Q8_0 | KvType::Q5_0 | KvType::Q4_0 | KvType::IQ4_NL => {
                QConv::Q8_0(vec![BlockQ8_0::ZERO; hd / 32])
            }
            KvType::Q5_1 | KvType::Q4_1 => QConv::Q8_1(vec![BlockQ8_1::ZERO; hd / 32]),
        }
    }

    /// Converts `q` as the CPU `from_float` of the vec-dot type does.
    fn set(&mut self, q: &[f32]) {
        let k = kernels();
        match self {
            QConv::F32(y) => y.copy_from_slice(q),
            QConv::F16(y) => (k.f32_to_f16_row)(q, y),
            QConv::BF16(y) => (k.f32_to_bf16_row)(q, y),
            QConv::Q8_0(y) => super::kernels::quantize_row_q8_0_x86(q, y),
            QConv::Q8_1(y) => (k.quantize_row_q8_1)(q, y),
        }
    }
}

/// `vec_dot(K row r, q)` as ggml's AVX2 kernel of K's type computes it.
fn k_dot(k: &Rows, r: usize, hd: usize, q: &QConv) -> f32 {
    let nb = hd / 32;
    let at = |b: usize| r * nb + b;
    match (k, q) {
        (Rows::F32(v), QConv::F32(q)) => float_dot::f32(&v[r * hd..(r + 1) * hd], q),
        (Rows::F16(v), QConv::F16(q)) => float_dot::f16(&v[r * hd..(r + 1) * hd], q),
        (Rows::BF16(v), QConv::BF16(q)) => float_dot::bf16(&v[r * hd..(r + 1) * hd], q),
        (Rows::Q8_0(v), QConv::Q8_0(q)) => {
            lane_dot::q8_0(&v[at(0)..at(nb)], q, |b, e| i32::from(b.qs[e]))
        }
        (Rows::Q4_0(v), QConv::Q8_0(q)) => {
            lane_dot::q8_0(&v[at(0)..at(nb)], q, |b, e| lane_dot::nib(&b.qs, e) - 8)
        }
        (Rows::Q5_0(v), QConv::Q8_0(q)) => lane_dot::q8_0(&v[at(0)..at(nb)], q, |b, e| {
            (lane_dot::nib(&b.qs, e) | (lane_dot::bit(b.qh, e) << 4)) - 16
        }),
        (Rows::IQ4NL(v), QConv::Q8_0(q)) => lane_dot::iq4_nl(&v[at(0)..at(nb)], q),
        (Rows::Q4_1(v), QConv::Q8_1(q)) => lane_dot::q8_1(
            &v[at(0)..at(nb)],
            q,
            |b| (b.d, b.m),
            |b, e| lane_dot::nib(&b.qs, e),
        ),
        (Rows::Q5_1(v), QConv::Q8_1(q)) => lane_dot::q8_1(
            &v[at(0)..at(nb)],
            q,
            |b| (b.d, b.m),
            |b, e| lane_dot::nib(&b.qs, e) | (lane_dot::bit(b.qh, e) << 4),
        ),
        _ => unreachable!("the query is converted for K's type"),
    }
}

/// ggml's AVX2 dots of the 32-value formats with Q8_0/Q8_1 (ggml-cpu/arch/x86/quants.c), lane
/// for lane: per block the integer products are summed exactly into eight lanes of four
/// consecutive values each (its `maddubs` + `madd` pairing), each lane is converted to f32 and
/// accumulated with one FMA per block by the block's scale product, and the lanes are reduced
/// as `hsum_float_8` (`(l0+l4 + l2+l6) + (l1+l5 + l3+l7)`). The quants crate's AVX2 dots pair
/// values in another lane order (same integers, other float sums), which moves scores by an
/// ulp; these reproduce llama.cpp's bits.
mod lane_dot {
    use half::f16;
    use longquant_quants::block::iq4_nl::{BlockIQ4NL, KVALUES_IQ4NL};
    use longquant_quants::block::q8_0::BlockQ8_0;
    use longquant_quants::block::q8_1::BlockQ8_1;

    /// Value `e` of a 32-value block's packed nibbles (low nibbles first, then high).
    #[inline(always)]
    pub(super) fn nib(qs: &[u8; 16], e: usize) -> i32 {
        i32::from(if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 })
    }

    /// Bit `e` of a block's fifth bits.
    #[inline(always)]
    pub(super) fn bit(qh: [u8; 4], e: usize) -> i32 {
        ((u32::from_le_bytes(qh) >> e) & 1) as i32
    }

    #[inline(always)]
    fn lanes(x: impl Fn(usize) -> i32, y: &[i8; 32]) -> [f32; 8] {
        std::array::from_fn(|l| {
            (4 * l..4 * l + 4)
                .map(|e| x(e) * i32::from(y[e]))
                .sum::<i32>() as f32
        })
    }

    #[inline(always)]
    fn hsum(v: [f32; 8]) -> f32 {
        let t: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
        (t[0] + t[2]) + (t[1] + t[3])
    }

    /// The Q8_0-activation form (Q8_0, Q4_0, Q5_0 weights): one accumulator,
    /// `acc = fma(f16(x.d)·f16(y.d), lanes, acc)`.
    pub(super) fn q8_0<B: HasD>(x: &[B], y: &[BlockQ8_0], val: impl Fn(&B, usize) -> i32) -> f32 {
        let mut acc = [0.0f32; 8];
        for (xb, yb) in x.iter().zip(y) {
            let d = xb.d().to_f32() * yb.d.to_f32();
            let p = lanes(|e| val(xb, e), &yb.qs);
            for (a, p) in acc.iter_mut().zip(p) {
                *a = d.mul_add(p, *a);
            }
        }
        hsum(acc)
    }

    /// The Q8_1 form (Q4_1, Q5_1): `acc = fma(f16(x.d)·f16(y.d), lanes, acc)` over unsigned
    /// codes, plus `Σ f16(x.m)·f16(y.s)` summed with FMA (GCC contracts `summs += m*s`).
    pub(super) fn q8_1<B>(
        x: &[B],
        y: &[BlockQ8_1],
        dm: impl Fn(&B) -> (f16, f16),
        val: impl Fn(&B, usize) -> i32,
    ) -> f32 {
        let mut acc = [0.0f32; 8];
        let mut summs = 0.0f32;
        for (xb, yb) in x.iter().zip(y) {
            let (d, m) = dm(xb);
            summs = m.to_f32().mul_add(yb.s.to_f32(), summs);
            let dd = d.to_f32() * yb.d.to_f32();
            let p = lanes(|e| val(xb, e), &yb.qs);
            for (a, p) in acc.iter_mut().zip(p) {
                *a = dd.mul_add(p, *a);
            }
        }
        hsum(acc) + summs
    }

    /// IQ4_NL · Q8_0: two accumulators, even and odd blocks, summed lane-wise before the
    /// reduction; an odd last block is added in scalar form.
    pub(super) fn iq4_nl(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
        let (mut a1, mut a2) = ([0.0f32; 8], [0.0f32; 8]);
        let val = |b: &BlockIQ4NL, e: usize| i32::from(KVALUES_IQ4NL[nib(&b.qs, e) as usize]);
        let pairs = x.len() / 2;
        for i in 0..pairs {
            for (acc, ib) in [(&mut a1, 2 * i), (&mut a2, 2 * i + 1)] {
                let d = y[ib].d.to_f32() * x[ib].d.to_f32();
                let p = lanes(|e| val(&x[ib], e), &y[ib].qs);
                for (a, p) in acc.iter_mut().zip(p) {
                    *a = d.mul_add(p, *a);
                }
            }
        }
        let mut s = hsum(std::array::from_fn(|l| a1[l] + a2[l]));
        for ib in 2 * pairs..x.len() {
            let d = y[ib].d.to_f32() * x[ib].d.to_f32();
            let sumi: i32 = (0..32)
                .map(|e| val(&x[ib], e) * i32::from(y[ib].qs[e]))
                .sum();
            s = d.mul_add(sumi as f32, s);
        }
        s
    }

    /// A block with an f16 scale `d`.
    pub(super) trait HasD {
        fn d(&self) -> f16;
    }
    macro_rules! has_d {
        ($($t:ty),*) => {$(impl HasD for $t { fn d(&self) -> f16 { self.d } })*};
    }
    use longquant_quants::block::q4_0::BlockQ4_0;
    use longquant_quants::block::q5_0::BlockQ5_0;
    has_d!(BlockQ8_0, BlockQ4_0, BlockQ5_0);
}

/// In-place fast Walsh–Hadamard transform of every `n`-wide piece of `x`, orthonormal (ggml's
/// `ggml_compute_forward_fwht`: scale by `1/sqrtf(n)` first, then the butterflies).
pub(crate) fn fwht(x: &mut [f32], n: usize) {
    let scale = 1.0f32 / (n as f32).sqrt();
    for piece in x.chunks_exact_mut(n) {
        for v in piece.iter_mut() {
            *v *= scale;
        }
        let mut len = 1;
        while len < n {
            for i in (0..n).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (piece[j], piece[j + len]);
                    piece[j] = u + v;
                    piece[j + len] = u - v;
                }
            }
            len <<= 1;
        }
    }
}

/// The rotation sizes llama.cpp's KV cache uses for a head size and cache types: `(K's, V's)`,
/// `None` when that half is not rotated.
pub(crate) fn rotations(hd: usize, kt: KvType, vt: KvType) -> (Option<usize>, Option<usize>) {
    let off = std::env::var("LLAMA_ATTN_ROT_DISABLE")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|v| v != 0);
    let k = (!off && kt.is_quantized() && hd > 0 && hd.is_multiple_of(64)).then(|| {
        let mut n = 64;
        while hd.is_multiple_of(2 * n) {
            n *= 2;
        }
        n
    });
    let v = (!off && vt.is_quantized() && hd > 0 && hd.is_multiple_of(64)).then_some(64);
    (k, v)
}

/// One layer's cache for the flash-attention path: K and V rows in their types.
#[derive(Debug)]
pub(crate) struct FaKv {
    k: Rows,
    v: Rows,
    vt: KvType,
    len: usize,
    nkv: usize,
    hd: usize,
    rot_k: Option<usize>,
    rot_v: Option<usize>,
}

impl FaKv {
    /// An empty cache. The quantized types need `head_dim % 32 == 0` (checked by the caller).
    pub(crate) fn new(kt: KvType, vt: KvType, nkv: usize, hd: usize) -> Self {
        let (rot_k, rot_v) = rotations(hd, kt, vt);
        // llama.cpp casts an F32 K or V to F16 before flash attention (`build_attn_mha`), so
        // an F32 half of a mixed pair is an F16 one here.
        let as_fa = |t: KvType| if t == KvType::F32 { KvType::F16 } else { t };
        let (kt, vt) = (as_fa(kt), as_fa(vt));
        Self {
            k: Rows::new(kt),
            v: Rows::new(vt),
            vt,
            len: 0,
            nkv,
            hd,
            rot_k,
            rot_v,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.k.clear();
        self.v.clear();
        self.len = 0;
    }

    /// Appends K and V rows (`n_head_kv · head_dim` values per position, K after RoPE),
    /// rotated where llama.cpp rotates them, then converted to the cache types.
    pub(crate) fn push(&mut self, k: &[f32], v: &[f32]) {
        let n = k.len() / (self.nkv * self.hd);
        match self.rot_k {
            Some(r) => {
                let mut kr = k.to_vec();
                fwht(&mut kr, r);
                self.k.push(&kr);
            }
            None => self.k.push(k),
        }
        match self.rot_v {
            Some(r) => {
                let mut vr = v.to_vec();
                fwht(&mut vr, r);
                self.v.push(&vr);
            }
            None => self.v.push(v),
        }
        self.len += n;
    }

    /// Causal attention in place, as llama.cpp's one-chunk flash-attention kernel: row `i` of `q`
    /// (`n_head · head_dim` values, position `p0 + i`, after RoPE) becomes its attention output
    /// over keys `0..=p0 + i`.
    pub(crate) fn attention(&self, q: &mut [f32], p0: usize, nh: usize, scale: f32) {
        let (hd, nkv) = (self.hd, self.nkv);
        let d = nh * hd;
        let group = nh / nkv;
        let n = q.len() / d;
        if n == 0 {
            return;
        }
        let kt_q = match &self.k {
            Rows::F32(_) => KvType::F32,
            Rows::F16(_) => KvType::F16,
            Rows::BF16(_) => KvType::BF16,
            Rows::Q8_0(_) | Rows::Q5_0(_) | Rows::Q4_0(_) | Rows::IQ4NL(_) => KvType::Q8_0,
            Rows::Q5_1(_) | Rows::Q4_1(_) => KvType::Q4_1,
        };
        let kend = (p0 + n).min(self.len);
        // V widened once: `to_float` is exact per row, so doing it per key visit or once gives
        // the same values. An F16 V is accumulated from its f16 values directly.
        let v32: Vec<f32> = if self.vt == KvType::F16 {
            Vec::new()
        } else {
            let mut w = vec![0.0f32; kend * nkv * hd];
            w.par_chunks_mut(nkv * hd).enumerate().for_each(|(p, y)| {
                self.v.to_f32(p * nkv, hd, y);
            });
            w
        };
        let v16: &[f16] = match &self.v {
            Rows::F16(v) => v,
            _ => &[],
        };
        let rows_per_task = 16;
        q.par_chunks_mut(rows_per_task * d)
            .enumerate()
            .for_each(|(t, qs)| {
                let mut qc = QConv::new(kt_q, hd);
                let mut qrow = vec![0.0f32; hd];
                let mut acc = vec![0.0f32; hd];
                let mut acc16 = vec![f16::ZERO; hd];
                for (ri, qr) in qs.chunks_exact_mut(d).enumerate() {
                    let i = p0 + t * rows_per_task + ri;
                    let last = i.min(kend.saturating_sub(1));
                    for h in 0..nh {
                        let g = h / group;
                        qrow.copy_from_slice(&qr[h * hd..(h + 1) * hd]);
                        if let Some(r) = self.rot_k {
                            fwht(&mut qrow, r);
                        }
                        qc.set(&qrow);
                        let mut m = f32::NEG_INFINITY;
                        let mut s_sum = 0.0f32;
                        let f16_acc = self.vt == KvType::F16;
                        if f16_acc {
                            acc16.fill(f16::ZERO);
                        } else {
                            acc.fill(0.0);
                        }
                        for j in 0..=last {
                            let r = j * nkv + g;
                            let s = k_dot(&self.k, r, hd, &qc) * scale;
                            let mut ms = 1.0f32;
                            let mut vs = 1.0f32;
                            if s > m {
                                let m_old = m;
                                m = s;
                                ms = (m_old - m).exp();
                                if f16_acc {
                                    vec_ops::scale_f16(&mut acc16, ms);
                                } else {
                                    vec_ops::scale_f32(&mut acc, ms);
                                }
                            } else {
                                vs = (s - m).exp();
                            }
                            if f16_acc {
                                vec_ops::mad_f16(&mut acc16, &v16[r * hd..(r + 1) * hd], vs);
                            } else {
                                vec_ops::mad_f32(&mut acc, &v32[r * hd..(r + 1) * hd], vs);
                            }
                            s_sum = s_sum.mul_add(ms, vs);
                        }
                        if f16_acc {
                            (kernels().f16_to_f32_row)(&acc16, &mut acc);
                        }
                        let inv = if s_sum == 0.0 { 0.0 } else { 1.0 / s_sum };
                        vec_ops::scale_f32(&mut acc, inv);
                        if let Some(r) = self.rot_v {
                            fwht(&mut acc, r);
                        }
                        qr[h * hd..(h + 1) * hd].copy_from_slice(&acc);
                    }
                }
            });
    }
}

/// ggml's elementwise vector steps of the flash-attention accumulator (`ggml_vec_mad_f32`,
/// `ggml_vec_scale_f32`, `ggml_vec_mad_f16`, `ggml_vec_scale_f16`): each lane is one FMA or one
/// product, so the lane width does not matter; the f16 forms widen, compute in f32 and round
/// back to f16 (nearest even) per step.
mod vec_ops {
    use half::f16;

    pub(super) fn mad_f32(y: &mut [f32], x: &[f32], v: f32) {
        #[cfg(target_arch = "x86_64")]
        if longquant_quants::simd::cpu::features().fma {
            // SAFETY: FMA was detected.
            unsafe { mad_f32_fma(y, x, v) };
            return;
        }
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.mul_add(v, *y);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mad_f32_fma(y: &mut [f32], x: &[f32], v: f32) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.mul_add(v, *y);
        }
    }

    pub(super) fn scale_f32(y: &mut [f32], v: f32) {
        for y in y.iter_mut() {
            *y *= v;
        }
    }

    pub(super) fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
        #[cfg(target_arch = "x86_64")]
        if longquant_quants::simd::cpu::features().avx2_fma_f16c() && y.len().is_multiple_of(8) {
            // SAFETY: AVX2, FMA and F16C were detected; lengths are multiples of 8.
            unsafe { x86::mad_f16(y, x, v) };
            return;
        }
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f16::from_f32(x.to_f32().mul_add(v, y.to_f32()));
        }
    }

    pub(super) fn scale_f16(y: &mut [f16], v: f32) {
        #[cfg(target_arch = "x86_64")]
        if longquant_quants::simd::cpu::features().avx2_fma_f16c() && y.len().is_multiple_of(8) {
            // SAFETY: as in `mad_f16`.
            unsafe { x86::scale_f16(y, v) };
            return;
        }
        for y in y.iter_mut() {
            *y = f16::from_f32(y.to_f32() * v);
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use half::f16;
        use std::arch::x86_64::*;

        /// # Safety
        /// AVX2, FMA and F16C; `y.len() == x.len()`, a multiple of 8.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn mad_f16(y: &mut [f16], x: &[f16], v: f32) {
            assert_eq!(y.len(), x.len());
            // SAFETY: 8-value loads and stores inside both slices; features per the caller.
            unsafe {
                let vv = _mm256_set1_ps(v);
                for i in (0..y.len()).step_by(8) {
                    let yp = y.as_mut_ptr().add(i);
                    let ay = _mm256_cvtph_ps(_mm_loadu_si128(yp.cast()));
                    let ax = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
                    let r = _mm256_fmadd_ps(ax, vv, ay);
                    _mm_storeu_si128(yp.cast(), _mm256_cvtps_ph::<0>(r));
                }
            }
        }

        /// # Safety
        /// AVX2, FMA and F16C; `y.len()` a multiple of 8.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn scale_f16(y: &mut [f16], v: f32) {
            // SAFETY: as above.
            unsafe {
                let vv = _mm256_set1_ps(v);
                for i in (0..y.len()).step_by(8) {
                    let yp = y.as_mut_ptr().add(i);
                    let ay = _mm256_cvtph_ps(_mm_loadu_si128(yp.cast()));
                    _mm_storeu_si128(yp.cast(), _mm256_cvtps_ph::<0>(_mm256_mul_ps(ay, vv)));
                }
            }
        }
    }
}

/// ggml's float dot products as its AVX2 build computes them (`ggml_vec_dot_f32`,
/// `ggml_vec_dot_f16`, `ggml_vec_dot_bf16` in ggml-cpu/vec.cpp), for a K cache of a float type
/// that takes the one-chunk kernel (K and V of different types).
mod float_dot {
    use half::{bf16, f16};

    /// Four 8-lane accumulators over 32-value steps, reduced as `GGML_F32x8_REDUCE`
    /// (`(a0 + a2) + (a1 + a3)`, then the halves, then two horizontal adds), then a scalar tail.
    fn reduce(acc: [[f32; 8]; 4]) -> f32 {
        let mut x0 = [0.0f32; 8];
        for l in 0..8 {
            x0[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        }
        let t: [f32; 4] = std::array::from_fn(|l| x0[l] + x0[l + 4]);
        (t[0] + t[1]) + (t[2] + t[3])
    }

    fn dot_with(n: usize, xa: impl Fn(usize) -> f32, ya: impl Fn(usize) -> f32) -> f32 {
        let np = n / 32 * 32;
        let mut acc = [[0.0f32; 8]; 4];
        for i in (0..np).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    let k = i + j * 8 + l;
                    *a = xa(k).mul_add(ya(k), *a);
                }
            }
        }
        let mut s = reduce(acc);
        for k in np..n {
            s += xa(k) * ya(k);
        }
        s
    }

    pub(super) fn f32(x: &[f32], y: &[f32]) -> f32 {
        dot_with(x.len(), |i| x[i], |i| y[i])
    }

    pub(super) fn f16(x: &[f16], y: &[f16]) -> f32 {
        dot_with(x.len(), |i| x[i].to_f32(), |i| y[i].to_f32())
    }

    /// ggml's AVX2 bf16 dot: four accumulators `c = x·y + c` (bf16 products are exact in f32,
    /// so fused or not is the same), reduced `(c1 + c3) + (c2 + c4)`, then the halves, then
    /// `(g0 + g2) + (g1 + g3)`; the tail is summed in f64.
    pub(super) fn bf16(x: &[bf16], y: &[bf16]) -> f32 {
        let n = x.len();
        let np = n / 32 * 32;
        let mut acc = [[0.0f32; 8]; 4];
        for i in (0..np).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    let k = i + j * 8 + l;
                    *a += x[k].to_f32() * y[k].to_f32();
                }
            }
        }
        let c: [f32; 8] =
            std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        let g: [f32; 4] = std::array::from_fn(|l| c[l + 4] + c[l]);
        let mut s = (if np > 0 {
            (g[0] + g[2]) + (g[1] + g[3])
        } else {
            0.0
        }) as f64;
        for k in np..n {
            s += (x[k].to_f32() * y[k].to_f32()) as f64;
        }
        s as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_errors_list_the_valid_ones() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>().unwrap(), t);
            assert_eq!(t.name().to_uppercase().parse::<KvType>().unwrap(), t);
        }
        let e = "q3_k".parse::<KvType>().unwrap_err();
        assert!(
            e.contains("q3_k") && e.contains("q8_0") && e.contains("iq4_nl"),
            "{e}"
        );
    }

    #[test]
    fn fwht_is_the_orthonormal_hadamard_product_and_its_own_inverse() {
        let n = 64;
        // Sylvester's matrix built as llama.cpp builds it.
        let mut h = vec![0.0f32; n * n];
        h[0] = 1.0 / (n as f32).sqrt();
        let mut s = 1;
        while s < n {
            for i in 0..s {
                for j in 0..s {
                    let v = h[i * n + j];
                    h[(i + s) * n + j] = v;
                    h[i * n + j + s] = v;
                    h[(i + s) * n + j + s] = -v;
                }
            }
            s *= 2;
        }
        let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let mut y = x.clone();
        fwht(&mut y, n);
        for r in 0..n {
            let want: f64 = (0..n).map(|c| h[r * n + c] as f64 * x[c] as f64).sum();
            assert!(
                (y[r] as f64 - want).abs() < 1e-5,
                "row {r}: {} vs {want}",
                y[r]
            );
        }
        fwht(&mut y, n);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn rotation_sizes_follow_llama_cpp() {
        assert_eq!(
            rotations(64, KvType::Q8_0, KvType::Q4_0),
            (Some(64), Some(64))
        );
        assert_eq!(rotations(128, KvType::Q8_0, KvType::F16), (Some(128), None));
        assert_eq!(rotations(192, KvType::F16, KvType::Q8_0), (None, Some(64)));
        assert_eq!(rotations(96, KvType::Q8_0, KvType::Q8_0), (None, None));
        assert_eq!(rotations(64, KvType::BF16, KvType::F32), (None, None));
    }
}
