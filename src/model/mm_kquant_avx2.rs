//! AVX2 (with FMA and F16C) tile kernels for K-quant and IQ4_XS weights times Q8_K activations
//! and IQ4_NL weights times Q8_0: for Q4_K..Q6_K the fallback of `mm_kquant` on CPUs without
//! AVX-512, for Q2_K, Q3_K, IQ4_XS and IQ4_NL the only tiles (AVX-512 hosts run them too).
//!
//! Each weight super-block is unpacked ONCE per call into 32-byte vectors of levels in
//! activation order (one per 32 weights) and its sub-block scales are spread over 16-bit lanes
//! once, then every one of the `N` tokens is multiplied against them. The row dot
//! (`quants/src/simd/avx2/dot.rs`) does the same unpacking for every (row, token) pair.
//!
//! The loops run weight group by weight group with the `N` tokens innermost, so the group's
//! levels and scales stay in two registers while each token adds into its own i32 accumulator
//! (`N` + a few of the 16 ymm registers).
//!
//! Bit identity with the row dot: for every 32-weight group the kernels compute exactly the row
//! dot's vectors (`maddubs` of the same level and activation bytes, `madd` with the same scale
//! lanes), so i32 lane `l` of a token's block sum holds the products of weights `4l..4l+4` of
//! every group, as the row dot's does. Integer addition is exact (and the row dot proves no lane
//! can overflow), so the order in which groups are added does not matter. The float work per
//! block and token (`d` = activation scale × weight scale, one FMA into 8 lanes, the mins term
//! into 4 lanes) and the final horizontal sums are the row dot's operations in the row dot's
//! order. Each token's instruction sequence does not depend on `N`, so a token gives the same
//! bits alone or in a batch.
use longquant_quants::block::iq4_nl::{BlockIQ4NL, KVALUES_IQ4NL};
use longquant_quants::block::{
    iq4_xs::BlockIQ4XS, q2_k::BlockQ2K, q3_k::BlockQ3K, q4_k::BlockQ4K, q5_k::BlockQ5K,
    q6_k::BlockQ6K, q8_0::BlockQ8_0, q8_k::BlockQ8K,
};
use std::arch::x86_64::*;

/// Whether the CPU runs these kernels.
pub(super) fn available() -> bool {
    longquant_quants::simd::cpu::features().avx2_fma_f16c()
}

/// An f16 bit pattern as f32 (exact, like `half`'s conversion in the row dot).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_bits(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Sum of 8 f32 lanes in the row dot's order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of 4 f32 lanes in the row dot's order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum128(m: __m128) -> f32 {
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// `vpshufb` control bytes that copy, within each 128-bit lane, the i16 at index `lo` (low
/// lane) or `hi` (high lane) of the lane's 8 i16 into all 8 i16 of that lane.
const fn spread_bytes(lo: usize, hi: usize) -> [u8; 32] {
    let mut c = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let ix = if i < 16 { lo } else { hi };
        c[i] = (2 * ix + (i & 1)) as u8;
        i += 1;
    }
    c
}

/// Q4_K/Q5_K: group `g` (32 weights) uses scale `g` in every lane.
static K4_SPREAD: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut g = 0;
    while g < 8 {
        t[g] = spread_bytes(g, g);
        g += 1;
    }
    t
};

/// Q6_K: group `k` of a 128-weight half uses that half's scale `2k` in the low lane (weights
/// 0..16 of the group) and `2k + 1` in the high lane (weights 16..32).
static Q6_SPREAD: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        t[k] = spread_bytes(2 * k, 2 * k + 1);
        k += 1;
    }
    t
};

/// A control table row as a vector.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn ctrl(c: &[u8; 32]) -> __m256i {
    // SAFETY: 32-byte unaligned load from a 32-byte array; AVX2 (caller).
    unsafe { _mm256_loadu_si256(c.as_ptr().cast()) }
}

/// Q4_K/Q5_K scales (i16 lanes 0..8) and mins (8..16), the word-parallel form of ggml's
/// `get_scale_min_k4` (the same unpacking as the row dot's).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn scales_mins_k4(s: &[u8; 12]) -> __m256i {
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    // Scales 0..4: low 6 bits of bytes 0..4; scales 4..8: low nibbles of bytes 8..12 with the
    // top two bits of bytes 0..4 above them. Mins likewise from bytes 4..8 and the high
    // nibbles of bytes 8..12.
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mn_lo = w1 & 0x3f3f_3f3f;
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let sc = u64::from(sc_lo) | (u64::from(sc_hi) << 32);
    let mn = u64::from(mn_lo) | (u64::from(mn_hi) << 32);
    _mm256_cvtepu8_epi16(_mm_set_epi64x(mn as i64, sc as i64))
}

/// Per-token float work of a Q4_K/Q5_K block, the row dot's: `acc += (y.d·d) · sumi` in 8
/// lanes and `accm += (−y.d·dmin) · Σ_j min_j·(bsums[2j] + bsums[2j+1])` in 4 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_finish(
    ab: &BlockQ8K,
    sumi: __m256i,
    mins: __m128i,
    (wd, wdmin): (f32, f32),
    acc: &mut __m256,
    accm: &mut __m128,
) {
    // SAFETY: reads ab.bsums (16 × i16 = 32 bytes); AVX2 (caller).
    unsafe {
        let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
        // Lane j: bsums[2j] + bsums[2j+1] (≤ 2·16·128 in magnitude, exact in i16).
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(bs),
            _mm256_extracti128_si256::<1>(bs),
        );
        let mi = _mm_madd_epi16(mins, q8s);
        *accm = _mm_fmadd_ps(_mm_set1_ps(-ab.d * wdmin), _mm_cvtepi32_ps(mi), *accm);
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(ab.d * wd), _mm256_cvtepi32_ps(sumi), *acc);
    }
}

/// Adds one 32-weight group of every token to its block sum: `lv` the group's levels (0..31),
/// `s` its scale in all 16 i16 lanes, `g` the group index in the block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_group<const N: usize>(
    lv: __m256i,
    s: __m256i,
    ab: &[&BlockQ8K; N],
    g: usize,
    sumi: &mut [__m256i; N],
) {
    // SAFETY: reads qs[32g..32g + 32] of each activation block, g < 8 (callers); AVX2 (caller).
    unsafe {
        for t in 0..N {
            let y = _mm256_loadu_si256(ab[t].qs.as_ptr().add(32 * g).cast());
            // Levels ≤ 31 × i8: pair sums ≤ 2·31·128, no saturation; then × 6-bit scale in i32.
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(lv, y), s);
            sumi[t] = _mm256_add_epi32(sumi[t], p);
        }
    }
}

/// Q4_K · Q8_K for `N` tokens: `a` holds `N` consecutive tokens of `w.len()` blocks each.
///
/// # Safety
/// [`available`] must hold. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4k<const N: usize>(w: &[BlockQ4K], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "q4k: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays; AVX2 (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            let sm = scales_mins_k4(&wb.scales);
            // Scales in both 128-bit lanes, so one in-lane shuffle spreads any of them.
            let sc = _mm256_permute4x64_epi64::<0x44>(sm);
            let mut sumi = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                // Bytes 32c..32c+32: weights 64c+l in the low nibbles, 64c+32+l in the high.
                let q = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * c).cast());
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let s_lo = _mm256_shuffle_epi8(sc, ctrl(&K4_SPREAD[2 * c]));
                k4_group::<N>(lo, s_lo, &ab, 2 * c, &mut sumi);
                let s_hi = _mm256_shuffle_epi8(sc, ctrl(&K4_SPREAD[2 * c + 1]));
                k4_group::<N>(hi, s_hi, &ab, 2 * c + 1, &mut sumi);
            }
            let d = (f16_bits(wb.d.to_bits()), f16_bits(wb.dmin.to_bits()));
            let mins = _mm256_extracti128_si256::<1>(sm);
            for t in 0..N {
                k4_finish(ab[t], sumi[t], mins, d, &mut acc[t], &mut accm[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]) + hsum128(accm[t]))
    }
}

/// Q5_K · Q8_K for `N` tokens.
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5k<const N: usize>(w: &[BlockQ5K], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "q5k: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays; AVX2 (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            let sm = scales_mins_k4(&wb.scales);
            let sc = _mm256_permute4x64_epi64::<0x44>(sm);
            // Fifth bit of weight 64c+l is bit 2c of qh[l], of weight 64c+32+l bit 2c+1: shift
            // qh down one bit per group and take bit 0 of each byte.
            let mut qh = _mm256_loadu_si256(wb.qh.as_ptr().cast());
            let mut sumi = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let q = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * c).cast());
                let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one));
                qh = _mm256_srli_epi16::<1>(qh);
                let h_hi = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one));
                qh = _mm256_srli_epi16::<1>(qh);
                let lo = _mm256_or_si256(_mm256_and_si256(q, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h_hi);
                let s_lo = _mm256_shuffle_epi8(sc, ctrl(&K4_SPREAD[2 * c]));
                k4_group::<N>(lo, s_lo, &ab, 2 * c, &mut sumi);
                let s_hi = _mm256_shuffle_epi8(sc, ctrl(&K4_SPREAD[2 * c + 1]));
                k4_group::<N>(hi, s_hi, &ab, 2 * c + 1, &mut sumi);
            }
            let d = (f16_bits(wb.d.to_bits()), f16_bits(wb.dmin.to_bits()));
            let mins = _mm256_extracti128_si256::<1>(sm);
            for t in 0..N {
                k4_finish(ab[t], sumi[t], mins, d, &mut acc[t], &mut accm[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]) + hsum128(accm[t]))
    }
}

/// Q6_K · Q8_K for `N` tokens. As in the row dot, the −32 offset of the levels is taken out per
/// i16 pair with a second `maddubs`, and i16 lanes 0..8 (8..16) of group `j` carry the scale of
/// sub-block `2j` (`2j + 1`).
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q6k<const N: usize>(w: &[BlockQ6K], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "q6k: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays; AVX2 (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let m3 = _mm256_set1_epi8(3);
        let m32 = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            // i16 lane i: scale of sub-block i (16 weights).
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.scales.as_ptr().cast()));
            let mut sumi = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                // Scales 8h..8h+8 in both 128-bit lanes.
                let sc = if h == 0 {
                    _mm256_permute4x64_epi64::<0x44>(sc16)
                } else {
                    _mm256_permute4x64_epi64::<0xee>(sc16)
                };
                let l0 = _mm256_loadu_si256(wb.ql.as_ptr().add(64 * h).cast());
                let l1 = _mm256_loadu_si256(wb.ql.as_ptr().add(64 * h + 32).cast());
                let mut qh = _mm256_loadu_si256(wb.qh.as_ptr().add(32 * h).cast());
                // Weight 128h+32k+l: low nibble from ql[64h+l] (k = 0, 2: low/high nibble) or
                // ql[64h+32+l] (k = 1, 3), its two high bits at bits 2k..2k+2 of qh[32h+l].
                let nib = [
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                ];
                for (k, nb4) in nib.into_iter().enumerate() {
                    let u = _mm256_or_si256(nb4, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3)));
                    qh = _mm256_srli_epi16::<2>(qh);
                    let s = _mm256_shuffle_epi8(sc, ctrl(&Q6_SPREAD[k]));
                    let g = 4 * h + k;
                    for t in 0..N {
                        let y = _mm256_loadu_si256(ab[t].qs.as_ptr().add(32 * g).cast());
                        // Pairs of u·y (u ≤ 63) minus pairs of 32·y: both ≤ 2·63·128 in
                        // magnitude, difference exact in i16 (the row dot's lanes).
                        let p = _mm256_sub_epi16(
                            _mm256_maddubs_epi16(u, y),
                            _mm256_maddubs_epi16(m32, y),
                        );
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, s));
                    }
                }
            }
            let wd = f16_bits(wb.d.to_bits());
            for t in 0..N {
                let d = _mm256_set1_ps(ab[t].d * wd);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]))
    }
}

/// Q2_K: bit pair `s` of byte `l` in half `h` is weight `128h + 32s + l`; that 32-weight group
/// spans sub-blocks `8h + 2s` (low 128-bit lane of the `maddubs` pairs) and `8h + 2s + 1`
/// (high lane), as in Q6_K's groups, so [`Q6_SPREAD`] spreads its scales too.
///
/// Per block and token the row dot's float work: `acc += (y.d·d)·sumi` and
/// `accm += (−y.d·dmin)·Σ_j min_j·bsums_j` (8 lanes each, one `madd` of the mins with the 16
/// group sums), the two accumulators added before the final horizontal sum.
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q2k<const N: usize>(w: &[BlockQ2K], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "q2k: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays; AVX2 (caller).
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            let sc8 = _mm_loadu_si128(wb.scales.as_ptr().cast());
            // i16 lane j: scale (low nibble) / min (high nibble) of sub-block j.
            let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc8, m4));
            let mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc8), m4));
            let mut sumi = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                // Scales 8h..8h+8 in both 128-bit lanes.
                let sc = if h == 0 {
                    _mm256_permute4x64_epi64::<0x44>(sc16)
                } else {
                    _mm256_permute4x64_epi64::<0xee>(sc16)
                };
                let mut q2 = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * h).cast());
                for (s, spread) in Q6_SPREAD.iter().enumerate() {
                    let codes = _mm256_and_si256(q2, m3);
                    q2 = _mm256_srli_epi16::<2>(q2);
                    let sv = _mm256_shuffle_epi8(sc, ctrl(spread));
                    let g = 4 * h + s;
                    for t in 0..N {
                        let y = _mm256_loadu_si256(ab[t].qs.as_ptr().add(32 * g).cast());
                        // Codes ≤ 3: pairs ≤ 2·3·128, then × 4-bit scale in i32.
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, y), sv);
                        sumi[t] = _mm256_add_epi32(sumi[t], p);
                    }
                }
            }
            let wd = f16_bits(wb.d.to_bits());
            let wdmin = f16_bits(wb.dmin.to_bits());
            for t in 0..N {
                let bs = _mm256_loadu_si256(ab[t].bsums.as_ptr().cast());
                let summs = _mm256_cvtepi32_ps(_mm256_madd_epi16(mn16, bs));
                accm[t] = _mm256_fmadd_ps(_mm256_set1_ps(-ab[t].d * wdmin), summs, accm[t]);
                let d = _mm256_set1_ps(ab[t].d * wd);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum256(_mm256_add_ps(acc[t], accm[t])))
    }
}

/// Q3_K's sixteen 6-bit scales, unbiased (`−32..32`), in i16 lanes in sub-block order: the
/// word-parallel form of the `scales` layout (low nibbles of scales 0..8 and 8..16 in the low
/// and high halves of bytes 0..8, the top two bits of scale `j` at bits `2(j/4)` of byte
/// `8 + j % 4`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales_q3k(s: &[u8; 12]) -> __m256i {
    let lo = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let hi = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let top = |k: u32| u64::from((hi >> (2 * k)) & 0x0303_0303);
    let m4 = 0x0f0f_0f0f_0f0f_0f0f_u64;
    let first = (lo & m4) | ((top(0) | (top(1) << 32)) << 4);
    let second = ((lo >> 4) & m4) | ((top(2) | (top(3) << 32)) << 4);
    // Biased scales are 0..63, so the byte subtraction cannot wrap below −32.
    let v = _mm_sub_epi8(
        _mm_set_epi64x(second as i64, first as i64),
        _mm_set1_epi8(32),
    );
    _mm256_cvtepi8_epi16(v)
}

/// Q3_K · Q8_K for `N` tokens. As in the row dot, levels are taken as `u = q + 4` (0..8,
/// unsigned for `maddubs`: the low two bits from `qs`, 4 where the `hmask` bit is set), and
/// `4·Σ_j scale_j·bsums_j` (one `madd` with the group sums, shifted) is subtracted from the
/// block's i32 lanes before the one FMA per block. Groups and scales as in [`q2k`].
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3k<const N: usize>(w: &[BlockQ3K], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "q3k: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays; AVX2 (caller).
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let four = _mm256_set1_epi8(4);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            let sc16 = scales_q3k(&wb.scales);
            // Each token's block sum starts at −4·Σ scale·bsum: the same exact integer as the
            // row dot's `sumi − corr`.
            let mut sumi: [__m256i; N] = std::array::from_fn(|t| {
                let bs = _mm256_loadu_si256(ab[t].bsums.as_ptr().cast());
                _mm256_sub_epi32(
                    _mm256_setzero_si256(),
                    _mm256_slli_epi32::<2>(_mm256_madd_epi16(sc16, bs)),
                )
            });
            // Bit 4h + s of hmask[l] belongs to weight 128h + 32s + l: shift it down one bit
            // per group and move bit 0 of each byte to bit 2 (value 4).
            let mut hm = _mm256_loadu_si256(wb.hmask.as_ptr().cast());
            for h in 0..2 {
                let sc = if h == 0 {
                    _mm256_permute4x64_epi64::<0x44>(sc16)
                } else {
                    _mm256_permute4x64_epi64::<0xee>(sc16)
                };
                let mut q = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * h).cast());
                for (s, spread) in Q6_SPREAD.iter().enumerate() {
                    let bit = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), four);
                    hm = _mm256_srli_epi16::<1>(hm);
                    let u = _mm256_or_si256(_mm256_and_si256(q, m3), bit);
                    q = _mm256_srli_epi16::<2>(q);
                    let sv = _mm256_shuffle_epi8(sc, ctrl(spread));
                    let g = 4 * h + s;
                    for t in 0..N {
                        let y = _mm256_loadu_si256(ab[t].qs.as_ptr().add(32 * g).cast());
                        // u ≤ 7: pairs ≤ 2·7·128, then × scale (|·| ≤ 32) in i32.
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), sv);
                        sumi[t] = _mm256_add_epi32(sumi[t], p);
                    }
                }
            }
            let wd = f16_bits(wb.d.to_bits());
            for t in 0..N {
                let d = _mm256_set1_ps(wd * ab[t].d);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]))
    }
}

/// IQ4_XS · Q8_K for `N` tokens. Per 32-weight group `ib` the row dot sums `level·y` exactly in
/// i16 products widened from bytes (`madd` of the sign-extended low 16 and high 16 bytes, so
/// lane `l` holds weights `2l, 2l+1, 16+2l, 17+2l`) and multiplies by `scale_ib − 32` in i32.
/// Here the group's levels are widened and multiplied by that scale once (|level·scale| ≤
/// 127·32 fits i16, a `madd` pair ≤ 2·4064·128 fits i32), so every lane holds the row dot's
/// exact integer; the one FMA per block and the horizontal sum are the row dot's.
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq4xs<const N: usize>(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "iq4xs: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays and the 16-byte level
    // table; AVX2 (caller).
    unsafe {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast());
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * nb + b]);
            let mut sumi = [_mm256_setzero_si256(); N];
            for ib in 0..8 {
                let lo = (wb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf;
                let hi = (wb.scales_h >> (2 * ib)) & 3;
                let ls = _mm256_set1_epi16((i16::from(lo) | ((hi as i16) << 4)) - 32);
                // Bytes 16ib..16ib+16: weights 32ib+l in the low nibbles, 32ib+16+l in the high.
                let q = _mm_loadu_si128(wb.qs.as_ptr().add(16 * ib).cast());
                let v = iq4_levels_x(table, q, ls);
                for t in 0..N {
                    let p = iq4_lanes(v, ab[t].qs.as_ptr().add(32 * ib));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
            let wd = f16_bits(wb.d.to_bits());
            for t in 0..N {
                let d = _mm256_set1_ps(wd * ab[t].d);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]))
    }
}

/// The 32 IQ4 levels of 16 packed bytes (weight `l` in the low nibble of byte `l`, weight
/// `16 + l` in the high one), widened to i16 and multiplied by `ls` (16 i16 lanes): weights
/// 0..16 and 16..32, the halves the row dot's `madd` of sign-extended bytes pairs with
/// activation bytes 0..16 and 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn iq4_levels_x(table: __m128i, q: __m128i, ls: __m256i) -> (__m256i, __m256i) {
    let m4 = _mm_set1_epi8(0x0f);
    let l_lo = _mm_shuffle_epi8(table, _mm_and_si128(q, m4));
    let l_hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(q), m4));
    (
        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(l_lo), ls),
        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(l_hi), ls),
    )
}

/// Lane sums of 32 widened (and scaled) levels times 32 activation bytes at `y`: lane `l`
/// holds weights `2l, 2l+1, 16+2l, 17+2l`, the row dot's layout.
///
/// # Safety
/// AVX2; `y` points at 32 readable bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn iq4_lanes((v_lo, v_hi): (__m256i, __m256i), y: *const i8) -> __m256i {
    // SAFETY: two 16-byte loads inside the 32 bytes at `y` (caller).
    unsafe {
        let y_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(y.cast()));
        let y_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(y.add(16).cast()));
        _mm256_add_epi32(_mm256_madd_epi16(v_lo, y_lo), _mm256_madd_epi16(v_hi, y_hi))
    }
}

/// IQ4_NL · Q8_0 for `N` tokens: per 32-weight block the levels are looked up and widened
/// once; per token the row dot's exact lane sums ([`iq4_lanes`], scale 1), then
/// `acc += (y.d·d)·lanes` (one FMA) and the row dot's horizontal sum.
///
/// # Safety
/// As [`q4k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq4nl<const N: usize>(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> [f32; N] {
    let nb = w.len();
    assert_eq!(a.len(), N * nb, "iq4nl: activation length");
    // SAFETY: register work plus loads inside each block's fixed arrays and the 16-byte level
    // table; AVX2 (caller).
    unsafe {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast());
        let one = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            let v = iq4_levels_x(table, _mm_loadu_si128(wb.qs.as_ptr().cast()), one);
            let wd = f16_bits(wb.d.to_bits());
            for t in 0..N {
                let ab = &a[t * nb + b];
                let s = iq4_lanes(v, ab.qs.as_ptr());
                let d = _mm256_set1_ps(f16_bits(ab.d.to_bits()) * wd);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
            }
        }
        std::array::from_fn(|t| hsum256(acc[t]))
    }
}
