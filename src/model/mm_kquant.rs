//! Matrix products of K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_XS times Q8_K
//! activations, and of IQ4_NL times Q8_0.
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`.
//!
//! Q2_K, Q3_K, IQ4_XS and IQ4_NL have AVX2 tile kernels only (`mm_kquant_avx2`, the same
//! driver and unpack-once structure as Q4_K's): they reproduce the AVX2 row dot of the kernel
//! table bit for bit, under the `Avx2` variant and, on AVX-512 hosts, under `Avx512` too (whose
//! row dots for these types are the AVX2 ones), so the forward pass's numbers for these types
//! are those of the row-by-row products it used before. The text below is about Q4_K..Q6_K.
//!
//! Where the CPU has AVX-512 (BW + VNNI) a register-tiled kernel is used: each weight
//! super-block is loaded, unpacked to one byte per weight in activation order, and its sub-block
//! scales are widened to 16-bit lanes ONCE, then multiplied against [`NT`] tokens' activation
//! blocks (`vpmaddubsw` for the byte products, `vpdpwssd` to apply the scales and accumulate in
//! one instruction, 64 weights per instruction pair). Row-by-row dot products redo the unpacking
//! for every token and need three AVX2 instructions per 32 weights for the same work.
//!
//! The float work is that of llama.cpp's tiled K-quant matmul (`ggml/src/ggml-cpu/tiled/`), which
//! `ggml_compute_forward_mul_mat` uses on x86 for every batch of 8+ tokens (perplexity, prompt
//! processing) and every K-quant weight it has not repacked (Q5_K and Q6_K; Q4_K too under
//! `--no-repack`): per super-block the scaled code sum is one exact integer, converted to f32 and
//! multiplied by the weight scale (the min term of Q4_K/Q5_K removed in one fused step), and the
//! token's running sum takes `that · d_act` in one fused multiply-add, super-block after
//! super-block. Checked bit for bit against llama.cpp's `ffn_out` of SmolLM2's Q6_K layers
//! (scripts/llamacpp/dump_tensors.py); the eight-lane row dot (the quants crate's, and
//! llama.cpp's own `ggml_vec_dot_q6_K_q8_K`, used there only below 8 tokens) rounds differently
//! in about 2/3 of the outputs. Q4_K, which llama.cpp repacks by default, follows the float
//! steps of its repacked q4_K_8x8 GEMM instead (a code sum and a min sum per 64-weight quarter,
//! each fused into its own running sum, subtracted at the end). Not followed on purpose: llama.cpp
//! gives the last `n % 4` tokens of an `n`-token batch to its repacked GEMV, which folds the
//! integer sums into the running sums once per 256-weight super-block instead of once per 64
//! weights, so its result for such a token depends on the batch size (e.g. token 84 of an
//! 85-token batch differs from token 84 of an 88-token batch in ~80 % of a Q4_K row's outputs;
//! scripts/llamacpp/q4k_gemv_tail.py redoes both recipes bit for bit). We keep the GEMM's steps
//! for every token, so we equal llama.cpp on all tokens but that tail. The AVX2 tile kernels and the
//! row-by-row fallback keep the row dot's eight-lane arithmetic, so AVX2-only hosts agree with
//! llama.cpp to within the activation-rounding noise rather than bit for bit.
//!
//! Every token owns its accumulators and sees the same instruction sequence whatever the number
//! of tokens processed together (the tile kernels are generic over that number), so a token's
//! result is bit-identical alone (decoding) or inside a batch, which `tests/forward_session.rs`
//! requires. Without AVX-512 but with AVX2 + FMA + F16C, the AVX2 tile kernels of
//! `mm_kquant_avx2` (same driver, same unpack-once idea with `maddubs` + `madd`, same lanes as
//! the row dot without any fold) are used; otherwise the generic row-by-row driver [`mm`] with
//! the quants crate's dot products.
use super::kernels::mm;
#[cfg(target_arch = "x86_64")]
use super::mm_kquant_avx2 as x256;
#[cfg(target_arch = "x86_64")]
use super::schedule::{self, Shape, Task};
use longquant_quants::block::{
    iq4_nl::BlockIQ4NL, iq4_xs::BlockIQ4XS, q2_k::BlockQ2K, q3_k::BlockQ3K, q4_k::BlockQ4K,
    q5_k::BlockQ5K, q6_k::BlockQ6K, q8_0::BlockQ8_0, q8_k::BlockQ8K,
};
use longquant_quants::simd::Kernels;

/// Tokens per tile-kernel call.
#[cfg(target_arch = "x86_64")]
const NT: usize = 4;

/// Tokens per AVX2 tile-kernel call: their eight i32 block sums, plus the weight group's levels
/// and scales, fit the 16 ymm registers. (Measured on the AVX-512 host with the AVX2 kernels
/// forced: 4 tokens ran Q4_K no faster than the row dots, 8 about 1.7× faster, 12 a little
/// slower than 8.)
#[cfg(target_arch = "x86_64")]
const NT2: usize = 8;

/// Bytes of weight rows walked together against one token group (a few rows of a 4096-wide
/// matrix): they stay in L1 next to the group's activations while every token group of the
/// task passes over them.
#[cfg(target_arch = "x86_64")]
const ROW_BYTES: usize = 12 * 1024;

/// A tile kernel: the dot products of one weight row (`bpr` blocks) with `N` consecutive
/// tokens' activation rows (`a.len() == N * bpr`, blocks of `A`, Q8_K unless said), as
/// `[token]`.
#[cfg(target_arch = "x86_64")]
type TileFn<W, const N: usize, A = BlockQ8K> = unsafe fn(&[W], &[A]) -> [f32; N];

/// Which implementation a product uses.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The AVX-512 tile kernels ([`x512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// The AVX2 tile kernels (`mm_kquant_avx2`).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Row-by-row dot products of the kernel table through [`mm`].
    Rows,
}

/// Every variant this CPU runs, fastest first (`Rows` always last).
fn supported() -> Vec<Variant> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if x512::available() {
            v.push(Variant::Avx512);
        }
        if x256::available() {
            v.push(Variant::Avx2);
        }
    }
    v.push(Variant::Rows);
    v
}

/// Environment variable naming the variant to use (`avx512`, `avx2` or `rows`), if the CPU
/// runs it: lets an AVX-512 host run the forward pass through the AVX2 kernels, or any host
/// through the row dots (for Q4_K..Q6_K the variants' float steps differ, see the module
/// text; for the other formats every variant gives the same bits). Read once.
const VARIANT_ENV: &str = "LONGQUANT_KQUANT_VARIANT";

/// The variant the products use: the fastest this CPU runs, or the one [`VARIANT_ENV`] names
/// if supported. Chosen once.
fn best() -> Variant {
    static BEST: std::sync::OnceLock<Variant> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        let all = supported();
        let forced = std::env::var(VARIANT_ENV).ok().and_then(|name| {
            all.iter()
                .copied()
                .find(|v| format!("{v:?}").eq_ignore_ascii_case(name.trim()))
        });
        forced
            .or_else(|| all.first().copied())
            .unwrap_or(Variant::Rows)
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4K weights (bpr blocks per row).
pub(crate) fn matmul_q4k(
    k: &Kernels,
    w: &[BlockQ4K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    matmul_q4k_with(best(), k, w, bpr, a, n_tok, rows, out)
}

#[allow(clippy::too_many_arguments)]
fn matmul_q4k_with(
    v: Variant,
    k: &Kernels,
    w: &[BlockQ4K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    // `v` comes from `supported()`: the tile kernels' CPU features are present.
    debug_assert!(supported().contains(&v), "{v:?} not supported here");
    match v {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => {
            drive_packed(w, bpr, a, n_tok, rows, out, x512::q4k::<NT>, x512::q4k::<1>)
        }
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => drive(
            w,
            bpr,
            a,
            n_tok,
            rows,
            out,
            x256::q4k::<NT2>,
            x256::q4k::<1>,
        ),
        Variant::Rows => mm(
            w,
            bpr,
            n_tok,
            rows,
            bpr * size_of::<BlockQ8K>(),
            out,
            |wr, t| (k.vec_dot_q4_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr]),
        ),
    }
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5K weights (bpr blocks per row).
pub(crate) fn matmul_q5k(
    k: &Kernels,
    w: &[BlockQ5K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    matmul_q5k_with(best(), k, w, bpr, a, n_tok, rows, out)
}

#[allow(clippy::too_many_arguments)]
fn matmul_q5k_with(
    v: Variant,
    k: &Kernels,
    w: &[BlockQ5K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    // `v` comes from `supported()`: the tile kernels' CPU features are present.
    debug_assert!(supported().contains(&v), "{v:?} not supported here");
    match v {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => {
            drive_packed(w, bpr, a, n_tok, rows, out, x512::q5k::<NT>, x512::q5k::<1>)
        }
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => drive(
            w,
            bpr,
            a,
            n_tok,
            rows,
            out,
            x256::q5k::<NT2>,
            x256::q5k::<1>,
        ),
        Variant::Rows => mm(
            w,
            bpr,
            n_tok,
            rows,
            bpr * size_of::<BlockQ8K>(),
            out,
            |wr, t| (k.vec_dot_q5_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr]),
        ),
    }
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ6K weights (bpr blocks per row).
pub(crate) fn matmul_q6k(
    k: &Kernels,
    w: &[BlockQ6K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    matmul_q6k_with(best(), k, w, bpr, a, n_tok, rows, out)
}

#[allow(clippy::too_many_arguments)]
fn matmul_q6k_with(
    v: Variant,
    k: &Kernels,
    w: &[BlockQ6K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    // `v` comes from `supported()`: the tile kernels' CPU features are present.
    debug_assert!(supported().contains(&v), "{v:?} not supported here");
    match v {
        #[cfg(target_arch = "x86_64")]
        Variant::Avx512 => {
            drive_packed(w, bpr, a, n_tok, rows, out, x512::q6k::<NT>, x512::q6k::<1>)
        }
        #[cfg(target_arch = "x86_64")]
        Variant::Avx2 => drive(
            w,
            bpr,
            a,
            n_tok,
            rows,
            out,
            x256::q6k::<NT2>,
            x256::q6k::<1>,
        ),
        Variant::Rows => mm(
            w,
            bpr,
            n_tok,
            rows,
            bpr * size_of::<BlockQ8K>(),
            out,
            |wr, t| (k.vec_dot_q6_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr]),
        ),
    }
}

/// The products of the formats with AVX2 tile kernels only (Q2_K, Q3_K, IQ4_XS): `matmul_X` for
/// the forward pass (variant [`best`]) and `matmul_X_with` for an explicit variant. Their row
/// dots exist in AVX2 and scalar form only, so `Avx512` runs the AVX2 tiles too (the host has
/// AVX2); every tile variant gives the AVX2 row dot's bits.
macro_rules! avx2_tiled_matmul {
    ($name:ident, $with:ident, $block:ty, $act:ty, $tile:ident, $dot:ident, $doc:literal) => {
        #[doc = concat!("`out[t * rows + r] = w[r] · a[t]` for ", $doc, " weights (bpr blocks per row).")]
        pub(crate) fn $name(
            k: &Kernels,
            w: &[$block],
            bpr: usize,
            a: &[$act],
            n_tok: usize,
            rows: usize,
            out: &mut [f32],
        ) {
            $with(best(), k, w, bpr, a, n_tok, rows, out)
        }

        #[allow(clippy::too_many_arguments)]
        fn $with(
            v: Variant,
            k: &Kernels,
            w: &[$block],
            bpr: usize,
            a: &[$act],
            n_tok: usize,
            rows: usize,
            out: &mut [f32],
        ) {
            // `v` comes from `supported()`: the tile kernels' CPU features are present (the
            // AVX-512 kernels' set includes AVX2, FMA and F16C).
            debug_assert!(supported().contains(&v), "{v:?} not supported here");
            match v {
                #[cfg(target_arch = "x86_64")]
                Variant::Avx512 | Variant::Avx2 => drive(
                    w,
                    bpr,
                    a,
                    n_tok,
                    rows,
                    out,
                    x256::$tile::<NT2>,
                    x256::$tile::<1>,
                ),
                Variant::Rows => mm(
                    w,
                    bpr,
                    n_tok,
                    rows,
                    bpr * size_of::<$act>(),
                    out,
                    |wr, t| (k.$dot)(wr, &a[t * bpr..(t + 1) * bpr]),
                ),
            }
        }
    };
}

avx2_tiled_matmul!(
    matmul_q2k,
    matmul_q2k_with,
    BlockQ2K,
    BlockQ8K,
    q2k,
    vec_dot_q2_k_q8_k,
    "Q2_K"
);
avx2_tiled_matmul!(
    matmul_q3k,
    matmul_q3k_with,
    BlockQ3K,
    BlockQ8K,
    q3k,
    vec_dot_q3_k_q8_k,
    "Q3_K"
);
avx2_tiled_matmul!(
    matmul_iq4xs,
    matmul_iq4xs_with,
    BlockIQ4XS,
    BlockQ8K,
    iq4xs,
    vec_dot_iq4_xs_q8_k,
    "IQ4_XS"
);
avx2_tiled_matmul!(
    matmul_iq4nl,
    matmul_iq4nl_with,
    BlockIQ4NL,
    BlockQ8_0,
    iq4nl,
    vec_dot_iq4_nl_q8_0,
    "IQ4_NL (times Q8_0 activations)"
);

/// Rows `r0..r1` of tokens `t0..t0 + nt` into `o` (row `r` of token `t0 + t` at
/// `o[t * stride + r - r0]`), walking rows in L1-sized groups and, per group, tokens in tiles
/// of `N`.
///
/// # Safety
/// The CPU features `k4`/`k1` were compiled for must be available.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block<W, A, const N: usize>(
    w: &[W],
    bpr: usize,
    a: &[A],
    (t0, nt, stride): (usize, usize, usize),
    (r0, r1): (usize, usize),
    o: &mut [f32],
    k4: TileFn<W, N, A>,
    k1: TileFn<W, 1, A>,
) {
    let group = (ROW_BYTES / (bpr * std::mem::size_of::<W>()).max(1)).max(1);
    for g0 in (r0..r1).step_by(group) {
        let g1 = (g0 + group).min(r1);
        let mut t = 0;
        while t + N <= nt {
            let at = &a[(t0 + t) * bpr..(t0 + t + N) * bpr];
            for r in g0..g1 {
                // SAFETY: features guaranteed by the caller; slice lengths are as `TileFn` says.
                let v = unsafe { k4(&w[r * bpr..(r + 1) * bpr], at) };
                for (i, x) in v.into_iter().enumerate() {
                    o[(t + i) * stride + r - r0] = x;
                }
            }
            t += N;
        }
        while t < nt {
            let at = &a[(t0 + t) * bpr..(t0 + t + 1) * bpr];
            for r in g0..g1 {
                // SAFETY: as above.
                let [x] = unsafe { k1(&w[r * bpr..(r + 1) * bpr], at) };
                o[t * stride + r - r0] = x;
            }
            t += 1;
        }
    }
}

/// The tile kernels through the scheduler (`schedule::run`): each task runs [`block`] on its
/// rows and tokens. Call only with kernels whose CPU features are available.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn drive<W: Sync, A: Sync, const N: usize>(
    w: &[W],
    bpr: usize,
    a: &[A],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
    k4: TileFn<W, N, A>,
    k1: TileFn<W, 1, A>,
) {
    let shape = Shape {
        rows,
        n_tok,
        act_bytes: bpr * size_of::<A>(),
        tok_align: N,
    };
    schedule::run(&shape, out, |task, o, stride| {
        let Task { t0, nt, r0, r1 } = task;
        // SAFETY: the caller checked the features of `k4`/`k1`.
        unsafe { block(w, bpr, a, (t0, nt, stride), (r0, r1), o, k4, k1) }
    })
}

#[cfg(target_arch = "x86_64")]
mod packed;

/// [`drive`] for the AVX-512 Q4_K/Q5_K/Q6_K kernels: tasks of [`packed::PACK_FROM`]+ tokens
/// take the packed kernels (the same bits), the others the tile kernels `k4`/`k1`. Call only
/// where `x512::available()`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn drive_packed<W: packed::Fmt>(
    w: &[W],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
    k4: TileFn<W, NT>,
    k1: TileFn<W, 1>,
) {
    let shape = Shape {
        rows,
        n_tok,
        act_bytes: bpr * size_of::<BlockQ8K>(),
        tok_align: NT,
    };
    schedule::run(&shape, out, |task, o, stride| {
        let Task { t0, nt, r0, r1 } = task;
        // SAFETY: the caller checked `x512::available()`, the features of every kernel here.
        unsafe {
            if nt >= packed::PACK_FROM && packed::enabled() {
                packed::task(w, bpr, a, (t0, nt, stride), (r0, r1), o)
            } else {
                block(w, bpr, a, (t0, nt, stride), (r0, r1), o, k4, k1)
            }
        }
    })
}

/// AVX-512 (F, BW, VL, VNNI) tile kernels.
#[cfg(target_arch = "x86_64")]
mod x512 {
    use super::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
    use std::arch::x86_64::*;

    /// Whether the CPU runs these kernels.
    pub(super) fn available() -> bool {
        longquant_quants::simd::cpu::features().avx512_vnni()
    }

    /// An f16 bit pattern as f32, with F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn f16_bits(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// 32 i16 lanes: lane `i` is `base + i / per`.
    fn index(base: usize, per: usize) -> [i16; 32] {
        let mut ix = [0i16; 32];
        for (i, v) in ix.iter_mut().enumerate() {
            *v = (base + i / per) as i16;
        }
        ix
    }

    /// Lane `l` plus lane `l + 8` of a block's i32 sums: a 64-weight chunk puts weights
    /// 4l..4l+4 of its first 32 in lane `l` and of its second 32 in lane `l + 8`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn fold_i(v: __m512i) -> __m256i {
        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
    }

    // Q4_K/Q5_K scales (i16 lanes 0..8) and mins (8..16): the AVX2 module's unpacking.
    use super::x256::scales_mins_k4;

    /// Constants shared by the Q4_K and Q5_K kernels: per 64-weight chunk `m`, the i16 index
    /// vector that spreads scale `2m` over lanes 0..16 and `2m + 1` over 16..32.
    struct K4Consts {
        sc_ix: [__m512i; 4],
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn k4_consts() -> K4Consts {
        // SAFETY: unaligned loads from local arrays of 64 bytes; AVX-512 (caller).
        unsafe {
            let ld = |m: usize| _mm512_loadu_si512(index(2 * m, 16).as_ptr().cast());
            K4Consts {
                sc_ix: [ld(0), ld(1), ld(2), ld(3)],
            }
        }
    }

    /// The token loop shared by Q4_K and Q5_K: `v[m]` are the block's levels for weights
    /// 64m..64m+64 (activation order), `sm` its scales and mins.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; `a` holds `N` tokens of `nb` blocks, `b < nb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn k4_tokens<const N: usize>(
        c: &K4Consts,
        v: &[__m512i; 4],
        sm: __m256i,
        (wd, wdmin): (f32, f32),
        a: &[BlockQ8K],
        (nb, b): (usize, usize),
        acc: &mut [f32; N],
    ) {
        // SAFETY: register work plus loads inside the blocks' fixed arrays; AVX-512 (caller).
        unsafe {
            let sm512 = _mm512_castsi256_si512(sm);
            let s: [__m512i; 4] =
                std::array::from_fn(|m| _mm512_permutexvar_epi16(c.sc_ix[m], sm512));
            let mins = _mm256_extracti128_si256::<1>(sm);
            for t in 0..N {
                let ab = &a[t * nb + b];
                let mut isum = _mm512_setzero_si512();
                for m in 0..4 {
                    let y = _mm512_loadu_si512(ab.qs.as_ptr().add(64 * m).cast());
                    // Levels 0..31 × i8: pair sums ≤ 2·31·128, exact in i16; vpdpwssd then
                    // multiplies by the 6-bit scales and accumulates in i32 (exact).
                    isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(v[m], y), s[m]);
                }
                // Σ_j min_j · (bsums[2j] + bsums[2j+1]), exact.
                let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                let q8s = _mm_hadd_epi16(
                    _mm256_castsi256_si128(bs),
                    _mm256_extracti128_si256::<1>(bs),
                );
                let smin = hsum_epi32_128(_mm_madd_epi16(mins, q8s));
                let sdot = _mm512_reduce_add_epi32(isum);
                acc[t] = block_k4(sdot, smin, wd, wdmin).mul_add(ab.d, acc[t]);
            }
        }
    }

    /// The token loop of Q4_K in the float steps of llama.cpp's default x86 path for Q4_K, the
    /// repacked `q4_K_8x8` GEMM (`ggml_gemm_q4_K_8x8_q8_K`, arch/x86/repack.cpp; `--no-repack`
    /// would take the tiled kernel of [`block_k4`] instead): for each 64-weight quarter of each
    /// super-block, the exact integer Σ scale·level·y, converted to f32, is fused into a running
    /// code sum with the factor `d·d_y`, and Σ min·bsum likewise into a running min sum with
    /// `dmin·d_y`; the result is code sum − min sum. Checked bit for bit against llama.cpp's
    /// `ffn_out` of SmolLM2's Q4_K layers.
    ///
    /// # Safety
    /// As [`k4_tokens`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn q4k_tokens<const N: usize>(
        c: &K4Consts,
        v: &[__m512i; 4],
        sm: __m256i,
        (wd, wdmin): (f32, f32),
        a: &[BlockQ8K],
        (nb, b): (usize, usize),
        acc: &mut [__m128; N],
        accm: &mut [__m128; N],
    ) {
        // SAFETY: register work plus loads inside the blocks' fixed arrays; AVX-512 (caller).
        unsafe {
            let sm512 = _mm512_castsi256_si512(sm);
            let s: [__m512i; 4] =
                std::array::from_fn(|m| _mm512_permutexvar_epi16(c.sc_ix[m], sm512));
            let mins = _mm256_extracti128_si256::<1>(sm);
            // Per token: the four quarters' code sums and min sums (exact integers, as f32) and
            // the two factors.
            let mut codes = [_mm_setzero_ps(); N];
            let mut mins_q = [_mm_setzero_ps(); N];
            let mut dd = [0.0f32; N];
            let mut dm = [0.0f32; N];
            for t in 0..N {
                let ab = &a[t * nb + b];
                let p: [__m512i; 4] = std::array::from_fn(|m| {
                    let y = _mm512_loadu_si512(ab.qs.as_ptr().add(64 * m).cast());
                    _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(v[m], y), s[m])
                });
                let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                let q8s = _mm_hadd_epi16(
                    _mm256_castsi256_si128(bs),
                    _mm256_extracti128_si256::<1>(bs),
                );
                // Quarter m: min_2m·(bsum of weights 64m..64m+32) + min_2m+1·(the next 32).
                codes[t] = _mm_cvtepi32_ps(hsum4_epi32(&p));
                mins_q[t] = _mm_cvtepi32_ps(_mm_madd_epi16(mins, q8s));
                dd[t] = wd * ab.d;
                dm[t] = wdmin * ab.d;
            }
            // Quarter after quarter, each token's running sums take one fused multiply-add
            // (lane t of a group of four is token t: a lane-wise FMA rounds exactly as the
            // scalar one, so a token's bits do not depend on N or on its place in the group).
            for g in 0..N.div_ceil(4) {
                let n = (N - 4 * g).min(4);
                let (mut cq, mut mq) = ([_mm_setzero_ps(); 4], [_mm_setzero_ps(); 4]);
                cq[..n].copy_from_slice(&codes[4 * g..4 * g + n]);
                mq[..n].copy_from_slice(&mins_q[4 * g..4 * g + n]);
                transpose4(&mut cq);
                transpose4(&mut mq);
                let mut f = [0.0f32; 4];
                let mut fm = [0.0f32; 4];
                f[..n].copy_from_slice(&dd[4 * g..4 * g + n]);
                fm[..n].copy_from_slice(&dm[4 * g..4 * g + n]);
                let (f, fm) = (_mm_loadu_ps(f.as_ptr()), _mm_loadu_ps(fm.as_ptr()));
                for m in 0..4 {
                    acc[g] = _mm_fmadd_ps(cq[m], f, acc[g]);
                    accm[g] = _mm_fmadd_ps(mq[m], fm, accm[g]);
                }
            }
        }
    }

    /// Transposes a 4 × 4 block of f32 held as four rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn transpose4(r: &mut [__m128; 4]) {
        let t0 = _mm_unpacklo_ps(r[0], r[1]);
        let t1 = _mm_unpacklo_ps(r[2], r[3]);
        let t2 = _mm_unpackhi_ps(r[0], r[1]);
        let t3 = _mm_unpackhi_ps(r[2], r[3]);
        r[0] = _mm_movelh_ps(t0, t1);
        r[1] = _mm_movehl_ps(t1, t0);
        r[2] = _mm_movelh_ps(t2, t3);
        r[3] = _mm_movehl_ps(t3, t2);
    }

    /// The totals of four vectors of 16 i32 lanes, as one vector `[Σp0, Σp1, Σp2, Σp3]`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum4_epi32(p: &[__m512i; 4]) -> __m128i {
        let h: [__m256i; 4] = std::array::from_fn(|m| {
            _mm256_add_epi32(
                _mm512_castsi512_si256(p[m]),
                _mm512_extracti64x4_epi64::<1>(p[m]),
            )
        });
        // Each 128-bit half of `q` holds [p0, p1, p2, p3] summed over its half's lanes.
        let q = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
        _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
    }

    /// One Q4_K/Q5_K super-block's contribution before the activation scale, in the float
    /// steps of llama.cpp's tiled K-quant matmul (`ggml/src/ggml-cpu/tiled`, which
    /// `ggml_compute_forward_mul_mat` takes for batches of 8+ tokens): the scaled code sum and the
    /// min sum are exact integers, the first is converted and multiplied by `d`, then the
    /// min term is removed in one fused step. The caller adds `result · d_act` to the running sum
    /// in one fused step too, super-block by super-block.
    #[inline(always)]
    fn block_k4(sdot: i32, smin: i32, wd: f32, wdmin: f32) -> f32 {
        (-wdmin).mul_add(smin as f32, sdot as f32 * wd)
    }

    /// Sum of 4 i32 lanes (exact; the order does not matter).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn hsum_epi32_128(v: __m128i) -> i32 {
        let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01>(v));
        _mm_cvtsi128_si32(v)
    }

    /// Q4_K · Q8_K for `N` tokens.
    ///
    /// # Safety
    /// [`available`] must hold; `a.len() == N * w.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q4k<const N: usize>(w: &[BlockQ4K], a: &[BlockQ8K]) -> [f32; N] {
        let nb = w.len();
        assert_eq!(a.len(), N * nb, "q4k: activation length");
        // SAFETY: register work plus loads inside each block's fixed arrays; AVX-512 (caller).
        unsafe {
            let c = k4_consts();
            let m4 = _mm512_set1_epi8(0x0f);
            // Group g (tokens 4g..4g+4) in acc[g]; N slots cover the N.div_ceil(4) groups.
            let mut acc = [_mm_setzero_ps(); N];
            let mut accm = [_mm_setzero_ps(); N];
            for (b, wb) in w.iter().enumerate() {
                let sm = scales_mins_k4(&wb.scales);
                // Bytes 32c..32c+32 hold weights 64c+l (low nibble) and 64c+32+l (high): the
                // 128-bit lane shuffle puts each 64 weights in activation order.
                let mut v = [_mm512_setzero_si512(); 4];
                for h in 0..2 {
                    let q = _mm512_loadu_si512(wb.qs.as_ptr().add(64 * h).cast());
                    let lo = _mm512_and_si512(q, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                    v[2 * h] = _mm512_shuffle_i64x2::<0x44>(lo, hi);
                    v[2 * h + 1] = _mm512_shuffle_i64x2::<0xee>(lo, hi);
                }
                let d = (f16_bits(wb.d.to_bits()), f16_bits(wb.dmin.to_bits()));
                q4k_tokens::<N>(&c, &v, sm, d, a, (nb, b), &mut acc, &mut accm);
            }
            let mut out = [0.0f32; N];
            for (g, o) in out.chunks_mut(4).enumerate() {
                let mut r = [0.0f32; 4];
                _mm_storeu_ps(r.as_mut_ptr(), _mm_sub_ps(acc[g], accm[g]));
                o.copy_from_slice(&r[..o.len()]);
            }
            out
        }
    }

    /// Q5_K · Q8_K for `N` tokens.
    ///
    /// # Safety
    /// As [`q4k`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q5k<const N: usize>(w: &[BlockQ5K], a: &[BlockQ8K]) -> [f32; N] {
        let nb = w.len();
        assert_eq!(a.len(), N * nb, "q5k: activation length");
        // SAFETY: register work plus loads inside each block's fixed arrays; AVX-512 (caller).
        unsafe {
            let c = k4_consts();
            let m4 = _mm512_set1_epi8(0x0f);
            let sixteen = _mm512_set1_epi8(16);
            // Fifth bit of weight 64m+l is bit 2m of qh[l], of weight 64m+32+l bit 2m+1.
            let bit: [__m512i; 4] = std::array::from_fn(|m| {
                _mm512_inserti64x4::<1>(
                    _mm512_set1_epi8(1 << (2 * m)),
                    _mm256_set1_epi8(1 << (2 * m + 1)),
                )
            });
            let mut acc = [0.0f32; N];
            for (b, wb) in w.iter().enumerate() {
                let sm = scales_mins_k4(&wb.scales);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(wb.qh.as_ptr().cast()));
                let mut v = [_mm512_setzero_si512(); 4];
                for h in 0..2 {
                    let q = _mm512_loadu_si512(wb.qs.as_ptr().add(64 * h).cast());
                    let lo = _mm512_and_si512(q, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                    v[2 * h] = _mm512_shuffle_i64x2::<0x44>(lo, hi);
                    v[2 * h + 1] = _mm512_shuffle_i64x2::<0xee>(lo, hi);
                }
                for m in 0..4 {
                    let k = _mm512_test_epi8_mask(qh, bit[m]);
                    v[m] = _mm512_mask_add_epi8(v[m], k, v[m], sixteen);
                }
                let d = (f16_bits(wb.d.to_bits()), f16_bits(wb.dmin.to_bits()));
                k4_tokens::<N>(&c, &v, sm, d, a, (nb, b), &mut acc);
            }
            acc
        }
    }

    /// Q6_K · Q8_K for `N` tokens. The −32 offset of the levels comes off as
    /// `32 · Σ scale·bsum` from the block's integer sum, as in llama.cpp's tiled kernel (the
    /// integer is the same however it is formed).
    ///
    /// # Safety
    /// As [`q4k`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const N: usize>(w: &[BlockQ6K], a: &[BlockQ8K]) -> [f32; N] {
        let nb = w.len();
        assert_eq!(a.len(), N * nb, "q6k: activation length");
        // SAFETY: register work plus loads inside each block's fixed arrays; AVX-512 (caller).
        unsafe {
            let m4 = _mm512_set1_epi8(0x0f);
            let m3 = _mm512_set1_epi8(3);
            let sc_ix: [__m512i; 4] =
                std::array::from_fn(|j| _mm512_loadu_si512(index(4 * j, 8).as_ptr().cast()));
            // The two high bits of weight 128h+32k+l are bits 2k..2k+2 of qh[32h+l]: per i16
            // lane shift counts for k = 0,1 (first pair) and k = 2,3 (second pair).
            let sh = |a: i16, b: i16| {
                _mm512_inserti64x4::<1>(_mm512_set1_epi16(a), _mm256_set1_epi16(b))
            };
            let (sh01, sh23) = (sh(0, 2), sh(4, 6));
            let mut acc = [0.0f32; N];
            for (b, wb) in w.iter().enumerate() {
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.scales.as_ptr().cast()));
                let sc512 = _mm512_castsi256_si512(sc16);
                let s: [__m512i; 4] =
                    std::array::from_fn(|j| _mm512_permutexvar_epi16(sc_ix[j], sc512));
                let mut v = [_mm512_setzero_si512(); 4];
                for h in 0..2 {
                    let l = _mm512_loadu_si512(wb.ql.as_ptr().add(64 * h).cast());
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        wb.qh.as_ptr().add(32 * h).cast(),
                    ));
                    let hb =
                        |s| _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srlv_epi16(qh, s), m3));
                    // Low nibbles of ql[64h..64h+64] are weights 128h..128h+64 in order, high
                    // nibbles 128h+64..128h+128.
                    v[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), hb(sh01));
                    v[2 * h + 1] =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), m4), hb(sh23));
                }
                let wd = f16_bits(wb.d.to_bits());
                for t in 0..N {
                    let ab = &a[t * nb + b];
                    let mut isum = _mm512_setzero_si512();
                    for j in 0..4 {
                        let y = _mm512_loadu_si512(ab.qs.as_ptr().add(64 * j).cast());
                        // Pairs of level·y with levels 0..63: |·| ≤ 2·63·128, exact in i16.
                        isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(v[j], y), s[j]);
                    }
                    // The level offset 32 comes off the block's total as 32·Σ scale·bsum.
                    let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                    let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc16));
                    let lanes = _mm256_sub_epi32(fold_i(isum), off);
                    let sdot = hsum_epi32_128(_mm_add_epi32(
                        _mm256_castsi256_si128(lanes),
                        _mm256_extracti128_si256::<1>(lanes),
                    ));
                    // One fused step per super-block, as llama.cpp's tiled kernel.
                    acc[t] = (sdot as f32 * wd).mul_add(ab.d, acc[t]);
                }
            }
            acc
        }
    }
}

/// The products with an explicit [`Variant`], for benchmarks (`benches/kquant_matmul.rs`).
#[doc(hidden)]
pub mod bench {
    pub use super::Variant;
    use super::{BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
    use longquant_quants::simd::kernels;

    /// Every variant this CPU runs, fastest first.
    pub fn supported() -> Vec<Variant> {
        super::supported()
    }

    /// The variant the forward pass uses on this CPU.
    pub fn best() -> Variant {
        super::best()
    }

    /// Panics unless this CPU runs `v` (the tile kernels need their instructions).
    fn check(v: Variant) {
        assert!(
            super::supported().contains(&v),
            "{v:?} is not supported on this CPU"
        );
    }

    /// `out[t * rows + r] = w[r] · a[t]` for Q4_K weights with variant `v`.
    pub fn matmul_q4k(
        v: Variant,
        w: &[BlockQ4K],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_q4k_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }

    /// `out[t * rows + r] = w[r] · a[t]` for Q5_K weights with variant `v`.
    pub fn matmul_q5k(
        v: Variant,
        w: &[BlockQ5K],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_q5k_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }

    /// `out[t * rows + r] = w[r] · a[t]` for Q2_K weights with variant `v`.
    pub fn matmul_q2k(
        v: Variant,
        w: &[BlockQ2K],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_q2k_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }

    /// `out[t * rows + r] = w[r] · a[t]` for Q3_K weights with variant `v`.
    pub fn matmul_q3k(
        v: Variant,
        w: &[BlockQ3K],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_q3k_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }

    /// `out[t * rows + r] = w[r] · a[t]` for IQ4_XS weights with variant `v`.
    pub fn matmul_iq4xs(
        v: Variant,
        w: &[BlockIQ4XS],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_iq4xs_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }

    /// `out[t * rows + r] = w[r] · a[t]` for Q6_K weights with variant `v`.
    pub fn matmul_q6k(
        v: Variant,
        w: &[BlockQ6K],
        bpr: usize,
        a: &[BlockQ8K],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        check(v);
        super::matmul_q6k_with(v, kernels(), w, bpr, a, n_tok, rows, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longquant_quants::block::{iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, q8_0, q8_k};
    use longquant_quants::simd::{available, kernels, scalar_kernels, VecDotFn};
    use longquant_quants::QK_K;

    type MatmulFn<W, A = BlockQ8K> =
        fn(Variant, &Kernels, &[W], usize, &[A], usize, usize, &mut [f32]);

    /// An activation block type of the products under test.
    trait Act: Clone {
        /// Values per block.
        const QK: usize;
        /// An all-zero block.
        fn zero() -> Self;
        fn quantize(x: &[f32], y: &mut [Self]);
        fn dequantize(x: &[Self], y: &mut [f32]);
    }

    impl Act for BlockQ8K {
        const QK: usize = QK_K;
        fn zero() -> Self {
            BlockQ8K::default()
        }
        fn quantize(x: &[f32], y: &mut [Self]) {
            (kernels().quantize_row_q8_k)(x, y)
        }
        fn dequantize(x: &[Self], y: &mut [f32]) {
            q8_k::dequantize_row_q8_k(x, y)
        }
    }

    impl Act for BlockQ8_0 {
        const QK: usize = 32;
        fn zero() -> Self {
            BlockQ8_0::ZERO
        }
        fn quantize(x: &[f32], y: &mut [Self]) {
            (kernels().quantize_row_q8_0)(x, y)
        }
        fn dequantize(x: &[Self], y: &mut [f32]) {
            q8_0::dequantize_row_q8_0(x, y)
        }
    }

    /// Every implementation this CPU runs: each supported variant with the best kernel table,
    /// and the row-by-row driver with every kernel table (so the scalar dots too).
    fn variants() -> Vec<(Variant, &'static Kernels)> {
        let mut v: Vec<(Variant, &'static Kernels)> = supported()
            .into_iter()
            .filter(|&v| v != Variant::Rows)
            .map(|v| (v, kernels()))
            .collect();
        for (_, k) in available() {
            v.push((Variant::Rows, k));
        }
        v
    }

    #[test]
    fn every_tile_variant_is_tested_where_the_cpu_has_it() {
        let v = supported();
        assert_eq!(v.last(), Some(&Variant::Rows));
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(v.contains(&Variant::Avx2), x256::available());
            assert_eq!(v.contains(&Variant::Avx512), x512::available());
            if std::env::var_os(VARIANT_ENV).is_none() {
                assert_eq!(best(), v[0]);
            }
        }
    }

    /// Deterministic pseudo-random values in [-1, 1) with occasional outliers.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 97 == 0 {
                    u * 8.0
                } else {
                    u
                }
            })
            .collect()
    }

    fn acts<A: Act>(n_tok: usize, bpr: usize, seed: u64) -> Vec<A> {
        let x = values(n_tok * bpr * A::QK, seed);
        let mut a = vec![A::zero(); n_tok * bpr];
        A::quantize(&x, &mut a);
        a
    }

    /// Checks a matmul against the row-by-row dots of every kernel table and against itself
    /// (every token alone gives the same bits as inside the batch).
    #[allow(clippy::type_complexity)]
    fn check<W: Clone + Default, A: Act>(
        quantize: fn(&[f32], &mut [W]),
        dequantize: fn(&[W], &mut [f32]),
        dot: fn(&Kernels) -> VecDotFn<W, A>,
        tiled: Option<fn(&[W], &[A]) -> f32>,
        matmul: MatmulFn<W, A>,
    ) {
        // Weights per block (activation blocks are as wide as weight blocks).
        let qk = A::QK;
        // The AVX2 row dot (the first non-scalar table), whose bits the tile kernels reproduce.
        let simd_table = available()
            .into_iter()
            .map(|(_, k)| k)
            .find(|k| !std::ptr::eq(*k, scalar_kernels()));
        for (bpr, rows) in [(1usize, 7usize), (3, 37), (2, 1), (6, 19), (16, 5)] {
            let x = values(rows * bpr * qk, 11 + rows as u64);
            let mut w = vec![W::default(); rows * bpr];
            quantize(&x, &mut w);
            let mut wf = vec![0.0f32; rows * bpr * qk];
            dequantize(&w, &mut wf);
            // 1..=9 covers every remainder of the 4- and 8-token tiles; 20 and 37 need several
            // full tiles per task.
            for n_tok in (1..=9).chain([20, 37]) {
                let a = acts::<A>(n_tok, bpr, 5 + n_tok as u64);
                let mut af = vec![0.0f32; n_tok * bpr * qk];
                A::dequantize(&a, &mut af);
                for (v, k) in variants() {
                    let mut out = vec![f32::NAN; n_tok * rows];
                    matmul(v, k, &w, bpr, &a, n_tok, rows, &mut out);
                    for t in 0..n_tok {
                        let at = &a[t * bpr..(t + 1) * bpr];
                        for r in 0..rows {
                            let wr = &w[r * bpr..(r + 1) * bpr];
                            let want = dot(scalar_kernels())(wr, at);
                            let mag: f32 = wf[r * bpr * qk..(r + 1) * bpr * qk]
                                .iter()
                                .zip(&af[t * bpr * qk..(t + 1) * bpr * qk])
                                .map(|(p, q)| (p * q).abs())
                                .sum();
                            let got = out[t * rows + r];
                            #[cfg(target_arch = "x86_64")]
                            if let (Variant::Avx512, Some(tiled)) = (v, tiled) {
                                // The float steps of llama.cpp's K-quant matmul for batches.
                                assert_eq!(
                                    got.to_bits(),
                                    tiled(wr, at).to_bits(),
                                    "{v:?} bpr {bpr} rows {rows} n_tok {n_tok} t {t} r {r}"
                                );
                            }
                            // Formats without their own AVX-512 steps (`tiled` None) run the
                            // AVX2 tiles under both variants.
                            #[cfg(target_arch = "x86_64")]
                            if v == Variant::Avx2 || (v == Variant::Avx512 && tiled.is_none()) {
                                // Same integer lanes and float order as the AVX2 row dot.
                                let simd = simd_table.expect("tile kernels imply the AVX2 table");
                                assert_eq!(
                                    got.to_bits(),
                                    dot(simd)(wr, at).to_bits(),
                                    "{v:?} bpr {bpr} rows {rows} n_tok {n_tok} t {t} r {r}"
                                );
                            }
                            assert!(
                                (got - want).abs() <= 1e-5 * mag,
                                "bpr {bpr} rows {rows} n_tok {n_tok} t {t} r {r}: {got} vs {want} (Σ|w·a| {mag})"
                            );
                        }
                        // The same token alone: bit-identical.
                        let mut one = vec![f32::NAN; rows];
                        matmul(v, k, &w, bpr, at, 1, rows, &mut one);
                        assert_eq!(
                            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            out[t * rows..(t + 1) * rows]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>(),
                            "bpr {bpr} rows {rows} n_tok {n_tok} t {t}: alone differs from batch"
                        );
                    }
                }
            }
        }
    }

    /// Scale and min of sub-block `j` of a Q4_K/Q5_K block (6-bit fields packed in 12 bytes).
    fn scale_min(s: &[u8; 12], j: usize) -> (i32, i32) {
        if j < 4 {
            (i32::from(s[j] & 63), i32::from(s[j + 4] & 63))
        } else {
            (
                i32::from((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4)),
                i32::from((s[j + 4] >> 4) | ((s[j] >> 6) << 4)),
            )
        }
    }

    /// llama.cpp's tiled K-quant float steps (`tiled-kernel.cpp`, VNNI band pass): per
    /// super-block, the exact integer sums `sdot = Σ scale·level·y` and `smin = Σ min·bsum`
    /// become `r = fma(-dmin, smin, f32(sdot)·d)` and the row sum `acc = fma(r, d_y, acc)`.
    fn tiled_k4(levels: &[[i32; QK_K]], w: &[(f32, f32, [u8; 12])], a: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for ((q, (d, dmin, sc)), y) in levels.iter().zip(w).zip(a) {
            let (mut sdot, mut smin) = (0i32, 0i32);
            for j in 0..8 {
                let (s, m) = scale_min(sc, j);
                let raw: i32 = (32 * j..32 * j + 32)
                    .map(|e| q[e] * i32::from(y.qs[e]))
                    .sum();
                sdot += s * raw;
                smin += m * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]));
            }
            let r = (-dmin).mul_add(smin as f32, sdot as f32 * d);
            acc = r.mul_add(y.d, acc);
        }
        acc
    }

    /// llama.cpp's repacked Q4_K GEMM float steps (`ggml_gemm_q4_K_8x8_q8_K`): per 64-weight
    /// quarter, `acc = fma(f32(Σ scale·level·y), d·d_y, acc)` and
    /// `accm = fma(f32(Σ min·bsum), dmin·d_y, accm)`; the result is `acc − accm`.
    fn repack_q4k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
        let (mut acc, mut accm) = (0.0f32, 0.0f32);
        for (b, y) in w.iter().zip(a) {
            let level = |e: usize| {
                let byte = b.qs[32 * (e / 64) + e % 32];
                i32::from(if e % 64 < 32 { byte & 0xf } else { byte >> 4 })
            };
            let dd = b.d.to_f32() * y.d;
            let dm = b.dmin.to_f32() * y.d;
            for m in 0..4 {
                let (mut codes, mut mins) = (0i32, 0i32);
                for j in [2 * m, 2 * m + 1] {
                    let (s, mn) = scale_min(&b.scales, j);
                    let raw: i32 = (32 * j..32 * j + 32)
                        .map(|e| level(e) * i32::from(y.qs[e]))
                        .sum();
                    codes += s * raw;
                    mins += mn * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]));
                }
                acc = (codes as f32).mul_add(dd, acc);
                accm = (mins as f32).mul_add(dm, accm);
            }
        }
        acc - accm
    }

    fn tiled_q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
        let levels: Vec<[i32; QK_K]> = w
            .iter()
            .map(|b| {
                std::array::from_fn(|e| {
                    let byte = b.qs[32 * (e / 64) + e % 32];
                    let lo = if e % 64 < 32 { byte & 0xf } else { byte >> 4 };
                    let hi = (b.qh[e % 32] >> (e / 32)) & 1;
                    i32::from(lo | (hi << 4))
                })
            })
            .collect();
        let p: Vec<_> = w
            .iter()
            .map(|b| (b.d.to_f32(), b.dmin.to_f32(), b.scales))
            .collect();
        tiled_k4(&levels, &p, a)
    }

    /// As [`tiled_k4`] for Q6_K: `sdot = Σ scale·(level·y − 32·bsum)` per 16 weights, no
    /// min term: `acc = fma(f32(sdot)·d, d_y, acc)`.
    fn tiled_q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for (b, y) in w.iter().zip(a) {
            let level = |e: usize| {
                let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
                let ql = b.ql[64 * h + 32 * (k % 2) + l];
                let lo = if k < 2 { ql & 0xf } else { ql >> 4 };
                let hi = (b.qh[32 * h + l] >> (2 * k)) & 3;
                i32::from(lo | (hi << 4))
            };
            let mut sdot = 0i32;
            for j in 0..16 {
                let raw: i32 = (16 * j..16 * j + 16)
                    .map(|e| level(e) * i32::from(y.qs[e]))
                    .sum();
                sdot += i32::from(b.scales[j]) * (raw - 32 * i32::from(y.bsums[j]));
            }
            acc = (sdot as f32 * b.d.to_f32()).mul_add(y.d, acc);
        }
        acc
    }

    #[test]
    fn q4k_matches_row_dots() {
        check(
            q4_k::quantize_row_q4_k_ref,
            q4_k::dequantize_row_q4_k,
            |k| k.vec_dot_q4_k_q8_k,
            Some(repack_q4k),
            matmul_q4k_with,
        );
    }

    #[test]
    fn q5k_matches_row_dots() {
        check(
            q5_k::quantize_row_q5_k_ref,
            q5_k::dequantize_row_q5_k,
            |k| k.vec_dot_q5_k_q8_k,
            Some(tiled_q5k),
            matmul_q5k_with,
        );
    }

    #[test]
    fn q6k_matches_row_dots() {
        check(
            q6_k::quantize_row_q6_k_ref,
            q6_k::dequantize_row_q6_k,
            |k| k.vec_dot_q6_k_q8_k,
            Some(tiled_q6k),
            matmul_q6k_with,
        );
    }

    #[test]
    fn iq4nl_matches_row_dots() {
        check(
            iq4_nl::quantize_row_iq4_nl,
            iq4_nl::dequantize_row_iq4_nl,
            |k| k.vec_dot_iq4_nl_q8_0,
            None,
            matmul_iq4nl_with,
        );
    }

    #[test]
    fn q2k_matches_row_dots() {
        check(
            q2_k::quantize_row_q2_k_ref,
            q2_k::dequantize_row_q2_k,
            |k| k.vec_dot_q2_k_q8_k,
            None,
            matmul_q2k_with,
        );
    }

    #[test]
    fn q3k_matches_row_dots() {
        check(
            q3_k::quantize_row_q3_k_ref,
            q3_k::dequantize_row_q3_k,
            |k| k.vec_dot_q3_k_q8_k,
            None,
            matmul_q3k_with,
        );
    }

    #[test]
    fn iq4xs_matches_row_dots() {
        check(
            iq4_xs::quantize_row_iq4_xs_ref,
            iq4_xs::dequantize_row_iq4_xs,
            |k| k.vec_dot_iq4_xs_q8_k,
            None,
            matmul_iq4xs_with,
        );
    }

    /// The same bits whatever the thread count, hence whatever the scheduler's split (token
    /// tiles only, rows × tokens through the staging buffer, rows only for one token), for
    /// every variant and format.
    #[test]
    fn same_bits_at_any_thread_count() {
        fn run<W: Sync, A: Sync>(v: Variant, k: &Kernels, m: MatmulFn<W, A>, w: &[W], a: &[A]) {
            let (bpr, rows) = (2usize, w.len() / 2);
            for n_tok in [1usize, 3, 37, 300] {
                let at = &a[..n_tok * bpr];
                let go = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool");
                    let mut out = vec![f32::NAN; n_tok * rows];
                    pool.install(|| m(v, k, w, bpr, at, n_tok, rows, &mut out));
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                let one = go(1);
                for threads in [2, 3, 16] {
                    assert!(one == go(threads), "{v:?} n_tok {n_tok} threads {threads}");
                }
            }
        }
        let (bpr, rows) = (2usize, 70usize);
        let x = values(rows * bpr * QK_K, 3);
        let a = acts::<BlockQ8K>(300, bpr, 4);
        let mut w4 = vec![BlockQ4K::default(); rows * bpr];
        q4_k::quantize_row_q4_k_ref(&x, &mut w4);
        let mut w5 = vec![BlockQ5K::default(); rows * bpr];
        q5_k::quantize_row_q5_k_ref(&x, &mut w5);
        let mut w6 = vec![BlockQ6K::default(); rows * bpr];
        q6_k::quantize_row_q6_k_ref(&x, &mut w6);
        let mut w2 = vec![BlockQ2K::default(); rows * bpr];
        q2_k::quantize_row_q2_k_ref(&x, &mut w2);
        let mut w3 = vec![BlockQ3K::default(); rows * bpr];
        q3_k::quantize_row_q3_k_ref(&x, &mut w3);
        let mut wx = vec![BlockIQ4XS::default(); rows * bpr];
        iq4_xs::quantize_row_iq4_xs_ref(&x, &mut wx);
        // IQ4_NL with Q8_0 activations: 32-weight blocks, so rows of `bpr` blocks are 64 wide.
        let mut wn = vec![BlockIQ4NL::default(); rows * bpr];
        iq4_nl::quantize_row_iq4_nl(&x[..rows * bpr * 32], &mut wn);
        let a0 = acts::<BlockQ8_0>(300, bpr, 6);
        for (v, k) in variants() {
            run(v, k, matmul_q2k_with, &w2, &a);
            run(v, k, matmul_q3k_with, &w3, &a);
            run(v, k, matmul_iq4xs_with, &wx, &a);
            run(v, k, matmul_iq4nl_with, &wn, &a0);
            run(v, k, matmul_q4k_with, &w4, &a);
            run(v, k, matmul_q5k_with, &w5, &a);
            run(v, k, matmul_q6k_with, &w6, &a);
        }
    }
}
