//! Matrix products of the 32-wide legacy formats: Q4_0/Q5_0/Q8_0 times Q8_0 activations, Q4_1/Q5_1
//! times Q8_1.
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`. On x86-64 with
//! AVX2 (and, where present, AVX-512 VNNI) a register-tiled kernel ([`x86`]) unpacks each
//! weight block once and multiplies it against several tokens, for several rows at a time;
//! elsewhere the generic row-by-row driver [`mm`] runs the quants crate's dot products. Both go
//! through the one scheduler (`schedule::run`), which decides the rows × tokens of each call.
//!
//! Numerics: the tiled kernel computes, per (row, token), exactly what the quants crate's AVX2
//! dot computes (the same exact integer lane sums, the same `d_w·d_a` products, the same f32
//! fused accumulation over blocks in order, the same final lane sum, and for Q4_1/Q5_1 the same
//! scalar sum of `m_w·s_a` with the Q8_1 block sum `s`). That makes every token's result
//! independent of how many tokens or rows are processed together (decoding one token at a time
//! gives bit-identical logits to a batch) and identical between the AVX2 and VNNI variants.
use super::kernels::mm;
use longquant_quants::block::{
    q4_0::BlockQ4_0, q4_1::BlockQ4_1, q5_0::BlockQ5_0, q5_1::BlockQ5_1, q8_0::BlockQ8_0,
    q8_1::BlockQ8_1,
};
use longquant_quants::simd::Kernels;

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4_0 weights (bpr blocks per row).
pub(crate) fn matmul_q4_0(
    k: &Kernels,
    w: &[BlockQ4_0],
    bpr: usize,
    a: &[BlockQ8_0],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::best() {
        return x86::matmul(isa, w, bpr, a, n_tok, rows, out);
    }
    mm(
        w,
        bpr,
        n_tok,
        rows,
        bpr * size_of::<BlockQ8_0>(),
        out,
        |wr, t| (k.vec_dot_q4_0_q8_0)(wr, &a[t * bpr..(t + 1) * bpr]),
    )
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5_0 weights (bpr blocks per row).
pub(crate) fn matmul_q5_0(
    k: &Kernels,
    w: &[BlockQ5_0],
    bpr: usize,
    a: &[BlockQ8_0],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::best() {
        return x86::matmul(isa, w, bpr, a, n_tok, rows, out);
    }
    mm(
        w,
        bpr,
        n_tok,
        rows,
        bpr * size_of::<BlockQ8_0>(),
        out,
        |wr, t| (k.vec_dot_q5_0_q8_0)(wr, &a[t * bpr..(t + 1) * bpr]),
    )
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ8_0 weights (bpr blocks per row): the VNNI tile
/// where the host has it (8-bit codes need `vpdpbusd`'s exact sums), otherwise the AVX2
/// one-row tile [`super::kernels::q8x`]; both give the same lanes, hence the same bits.
pub(crate) fn matmul_q8_0(
    k: &Kernels,
    w: &[BlockQ8_0],
    bpr: usize,
    a: &[BlockQ8_0],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = x86::best() == Some(x86::Isa::Vnni);
        if vnni || super::kernels::q8x::available() {
            return x86::matmul_q8_0(vnni, w, bpr, a, n_tok, rows, out);
        }
    }
    mm(
        w,
        bpr,
        n_tok,
        rows,
        bpr * size_of::<BlockQ8_0>(),
        out,
        |wr, t| (k.vec_dot_q8_0_q8_0)(wr, &a[t * bpr..(t + 1) * bpr]),
    )
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4_1 weights (bpr blocks per row).
pub(crate) fn matmul_q4_1(
    k: &Kernels,
    w: &[BlockQ4_1],
    bpr: usize,
    a: &[BlockQ8_1],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::best() {
        return x86::matmul(isa, w, bpr, a, n_tok, rows, out);
    }
    mm(
        w,
        bpr,
        n_tok,
        rows,
        bpr * size_of::<BlockQ8_1>(),
        out,
        |wr, t| (k.vec_dot_q4_1_q8_1)(wr, &a[t * bpr..(t + 1) * bpr]),
    )
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5_1 weights (bpr blocks per row).
pub(crate) fn matmul_q5_1(
    k: &Kernels,
    w: &[BlockQ5_1],
    bpr: usize,
    a: &[BlockQ8_1],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::best() {
        return x86::matmul(isa, w, bpr, a, n_tok, rows, out);
    }
    mm(
        w,
        bpr,
        n_tok,
        rows,
        bpr * size_of::<BlockQ8_1>(),
        out,
        |wr, t| (k.vec_dot_q5_1_q8_1)(wr, &a[t * bpr..(t + 1) * bpr]),
    )
}

/// The register-tiled kernels. A tile is `NR` weight rows × `NT` tokens: for every block
/// position the `NR` weight blocks are unpacked once to unsigned codes and every token's
/// activation block is loaded (and its offset term formed) once, then each of the `NR·NT`
/// pairs costs one integer product (`vpdpbusd`, or `maddubs`+`madd` on plain AVX2), one
/// conversion and one FMA.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
    use crate::model::kernels::q8x;
    use crate::model::schedule::{self, Shape, ROW_BLOCK};
    use std::arch::x86_64::*;

    /// An instruction-set variant of the tiled kernel.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Isa {
        /// AVX2 + FMA + F16C: integer products by `maddubs` then `madd`.
        Avx2,
        /// As [`Isa::Avx2`] plus AVX-512 VL + VNNI: integer products by 256-bit `vpdpbusd`,
        /// with the (wider) EVEX register file allowing bigger tiles.
        Vnni,
    }

    impl Isa {
        fn available(self) -> bool {
            let f = longquant_quants::simd::cpu::features();
            match self {
                Isa::Avx2 => f.avx2_fma_f16c(),
                Isa::Vnni => f.avx2_fma_f16c() && f.avx512f && f.avx512vl && f.avx512vnni,
            }
        }
    }

    /// Every variant the host supports, best first (the tests run each).
    #[cfg(test)]
    pub(super) fn supported() -> Vec<Isa> {
        [Isa::Vnni, Isa::Avx2]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    /// The best variant the host supports, if any (detection results are cached by std).
    pub(super) fn best() -> Option<Isa> {
        [Isa::Vnni, Isa::Avx2].into_iter().find(|i| i.available())
    }

    /// f16 bits to f32 (exact).
    ///
    /// # Safety
    /// F16C must be available.
    #[inline(always)]
    unsafe fn h2f(bits: u16) -> f32 {
        // SAFETY: register-only F16C conversion (caller guarantees F16C).
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
    }

    /// 32 four-bit codes in weight order: low nibbles are weights 0..16, high nibbles 16..32.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
        // SAFETY: 16-byte load from `qs`; AVX2 (caller).
        unsafe {
            let b = _mm_loadu_si128(qs.as_ptr().cast());
            let lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), _mm_set1_epi8(0x0f));
            _mm256_set_m128i(hi, lo)
        }
    }

    /// 0x10 in byte `j` where bit `j` of the little-endian `qh` is set (the fifth code bit).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
        // SAFETY: register-only AVX2 work.
        unsafe {
            // Byte j receives byte j/8 of qh, then is tested against bit j%8.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(u32::from_le_bytes(qh) as i32),
                _mm256_setr_epi64x(
                    0,
                    0x0101_0101_0101_0101,
                    0x0202_0202_0202_0202,
                    0x0303_0303_0303_0303,
                ),
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }
    }

    /// A legacy weight block: unsigned codes `u` (≤ 31, or ≤ 255 when `WIDE`), weight =
    /// `d·(u − OFF)` or `d·u + m`.
    pub(super) trait WBlock: Sync {
        /// The code offset (8 for Q4_0, 16 for Q5_0, 128 for Q8_0, 0 for the formats with a
        /// min).
        const OFF: i32;
        /// Whether codes can exceed 31 (Q8_0's `w + 128`): `maddubs` pairs could then
        /// saturate, so only the VNNI variant (exact `vpdpbusd`) may run the format.
        const WIDE: bool = false;
        /// Whether the block has a min `m` (Q4_1, Q5_1).
        const MIN: bool;
        /// The 32 codes as unsigned bytes in weight order.
        ///
        /// # Safety
        /// AVX2 must be available.
        unsafe fn codes(&self) -> __m256i;
        /// Bits of the f16 scale.
        fn d_bits(&self) -> u16;
        /// Bits of the f16 min (0 when the format has none).
        fn m_bits(&self) -> u16;
    }

    impl WBlock for BlockQ4_0 {
        const OFF: i32 = 8;
        const MIN: bool = false;
        #[inline(always)]
        unsafe fn codes(&self) -> __m256i {
            // SAFETY: AVX2 (caller).
            unsafe { nibbles(&self.qs) }
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn m_bits(&self) -> u16 {
            0
        }
    }

    impl WBlock for BlockQ5_0 {
        const OFF: i32 = 16;
        const MIN: bool = false;
        #[inline(always)]
        unsafe fn codes(&self) -> __m256i {
            // SAFETY: AVX2 (caller).
            unsafe { _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh)) }
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn m_bits(&self) -> u16 {
            0
        }
    }

    impl WBlock for BlockQ4_1 {
        const OFF: i32 = 0;
        const MIN: bool = true;
        #[inline(always)]
        unsafe fn codes(&self) -> __m256i {
            // SAFETY: AVX2 (caller).
            unsafe { nibbles(&self.qs) }
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn m_bits(&self) -> u16 {
            self.m.to_bits()
        }
    }

    impl WBlock for BlockQ5_1 {
        const OFF: i32 = 0;
        const MIN: bool = true;
        #[inline(always)]
        unsafe fn codes(&self) -> __m256i {
            // SAFETY: AVX2 (caller).
            unsafe { _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh)) }
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn m_bits(&self) -> u16 {
            self.m.to_bits()
        }
    }

    impl WBlock for BlockQ8_0 {
        const OFF: i32 = 128;
        const MIN: bool = false;
        const WIDE: bool = true;
        #[inline(always)]
        unsafe fn codes(&self) -> __m256i {
            // w + 128 as an unsigned byte is w with its top bit flipped. With the −128·Σy
            // lane term this gives exactly the lanes of the sign trick (|w|·sign(y, w)).
            // SAFETY: 32-byte load from `qs`; AVX2 (caller).
            unsafe {
                _mm256_xor_si256(
                    _mm256_loadu_si256(self.qs.as_ptr().cast()),
                    _mm256_set1_epi8(-128),
                )
            }
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn m_bits(&self) -> u16 {
            0
        }
    }

    /// An activation block: 32 signed bytes, an f16 scale and (Q8_1) an f16 block sum.
    pub(super) trait ABlock: Sync {
        /// The 32 quantized values.
        fn qs(&self) -> &[i8; 32];
        /// Bits of the f16 scale.
        fn d_bits(&self) -> u16;
        /// Bits of the f16 block sum `s` (0 for Q8_0, which has none).
        fn s_bits(&self) -> u16;
    }

    impl ABlock for BlockQ8_0 {
        #[inline(always)]
        fn qs(&self) -> &[i8; 32] {
            &self.qs
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn s_bits(&self) -> u16 {
            0
        }
    }

    impl ABlock for BlockQ8_1 {
        #[inline(always)]
        fn qs(&self) -> &[i8; 32] {
            &self.qs
        }
        #[inline(always)]
        fn d_bits(&self) -> u16 {
            self.d.to_bits()
        }
        #[inline(always)]
        fn s_bits(&self) -> u16 {
            self.s.to_bits()
        }
    }

    /// How the exact integer lane sums are formed. Lane `l` of every result is the sum of the
    /// four products of bytes `4l..4l + 4` — the layout of `madd(maddubs(u, y), 1)`, so both
    /// variants (and the quants crate's dot) produce identical lanes.
    trait IntDot {
        /// Lane sums of `u·y` (`u` unsigned ≤ 31, `y` signed) added to `acc`.
        ///
        /// # Safety
        /// The variant's instruction set must be available.
        unsafe fn dot_add(acc: __m256i, u: __m256i, y: __m256i) -> __m256i;
        /// Lane sums of `−off·y` (`0 < off ≤ 16`, or 128).
        ///
        /// # Safety
        /// As for `dot_add`.
        #[inline(always)]
        unsafe fn neg_off(off: i32, y: __m256i) -> __m256i {
            // SAFETY: AVX2 (caller); off·y pairs are at most 2·16·128, no i16 saturation;
            // for 128 the plain lane sums Σy (at most 4·128) are scaled exactly in i32.
            unsafe {
                let ones16 = _mm256_set1_epi16(1);
                if off <= 16 {
                    let s = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_set1_epi8(off as i8), y),
                        ones16,
                    );
                    _mm256_sub_epi32(_mm256_setzero_si256(), s)
                } else {
                    debug_assert_eq!(off, 128);
                    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), y), ones16);
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(s))
                }
            }
        }
    }

    struct Avx2Dot;
    impl IntDot for Avx2Dot {
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
            // SAFETY: AVX2 (caller). maddubs pairs are at most 2·31·128 < 2^15: exact.
            unsafe {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
                _mm256_add_epi32(acc, p)
            }
        }
    }

    struct VnniDot;
    impl IntDot for VnniDot {
        #[inline(always)]
        unsafe fn dot_add(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
            // SAFETY: AVX-512 VL + VNNI (caller); vpdpbusd sums four u8·i8 products per lane
            // into i32 exactly (no intermediate saturation).
            unsafe { _mm256_dpbusd_epi32(acc, u, y) }
        }
    }

    /// Sum of the 8 lanes, in the quants crate's order.
    ///
    /// # Safety
    /// AVX must be available.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only work.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// One tile: rows `w[r·bpr..]` (r < NR) against tokens `a[t·bpr..]` (t < NT); writes
    /// `o[t·stride + r]`.
    ///
    /// # Safety
    /// The instruction set of `D` plus AVX2/FMA/F16C must be available; `w.len() ≥ NR·bpr`,
    /// `a.len() ≥ NT·bpr`, `o.len() > (NT − 1)·stride + NR − 1` (checked by the caller).
    #[inline(always)]
    unsafe fn tile<W: WBlock, A: ABlock, D: IntDot, const NR: usize, const NT: usize>(
        w: &[W],
        a: &[A],
        bpr: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: every index below is r·bpr + b or t·bpr + b with r < NR, t < NT, b < bpr,
        // inside the slices by the contract above; intrinsics need the features guaranteed by
        // the caller.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NT]; NR];
            let mut summs = [[0.0f32; NT]; NR];
            for b in 0..bpr {
                let mut u = [_mm256_setzero_si256(); NR];
                let mut dw = [_mm256_setzero_ps(); NR];
                let mut mw = [0.0f32; NR];
                for r in 0..NR {
                    let wb = w.get_unchecked(r * bpr + b);
                    u[r] = wb.codes();
                    dw[r] = _mm256_set1_ps(h2f(wb.d_bits()));
                    if W::MIN {
                        mw[r] = h2f(wb.m_bits());
                    }
                }
                for t in 0..NT {
                    let ab = a.get_unchecked(t * bpr + b);
                    let y = _mm256_loadu_si256(ab.qs().as_ptr().cast());
                    let init = if W::OFF != 0 {
                        D::neg_off(W::OFF, y)
                    } else {
                        _mm256_setzero_si256()
                    };
                    let da = _mm256_set1_ps(h2f(ab.d_bits()));
                    let sa = if W::MIN { h2f(ab.s_bits()) } else { 0.0 };
                    for r in 0..NR {
                        let lanes = D::dot_add(init, u[r], y);
                        // d_w·d_a rounded to f32 before the fused multiply-add, as in the
                        // row dot (a vector multiply rounds exactly as the scalar one).
                        let dd = _mm256_mul_ps(dw[r], da);
                        acc[r][t] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[r][t]);
                        if W::MIN {
                            summs[r][t] += mw[r] * sa;
                        }
                    }
                }
            }
            for r in 0..NR {
                for t in 0..NT {
                    let v = hsum(acc[r][t]);
                    *o.get_unchecked_mut(t * stride + r) = if W::MIN { v + summs[r][t] } else { v };
                }
            }
        }
    }

    /// Rows `r0..r1` × tokens `t0..t0 + nt` with tiles of `NR × NT` (narrower at the edges),
    /// into `o[t·stride + r − r0]` (t relative to t0).
    ///
    /// # Safety
    /// The instruction set of `D` plus AVX2/FMA/F16C must be available.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<W: WBlock, A: ABlock, D: IntDot, const NR: usize, const NT: usize>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        assert!(r1 * bpr <= w.len() && (t0 + nt) * bpr <= a.len());
        assert!(nt == 0 || r1 == r0 || (nt - 1) * stride + (r1 - r0) <= o.len());
        let mut r = r0;
        while r < r1 {
            let wide = r + NR <= r1;
            let wr = &w[r * bpr..];
            let mut t = 0;
            while t < nt {
                let at = &a[(t0 + t) * bpr..];
                let ot = &mut o[t * stride + r - r0..];
                let full_t = t + NT <= nt;
                // SAFETY: bounds asserted above (each tile stays within rows r..r1 and tokens
                // t..nt); features guaranteed by the caller.
                unsafe {
                    match (wide, full_t) {
                        (true, true) => tile::<W, A, D, NR, NT>(wr, at, bpr, ot, stride),
                        (true, false) => tile::<W, A, D, NR, 1>(wr, at, bpr, ot, stride),
                        (false, true) => tile::<W, A, D, 1, NT>(wr, at, bpr, ot, stride),
                        (false, false) => tile::<W, A, D, 1, 1>(wr, at, bpr, ot, stride),
                    }
                }
                t += if full_t { NT } else { 1 };
            }
            r += if wide { NR } else { 1 };
        }
    }

    /// Weight rows unpacked for reuse across a token tile: codes as bytes, scales and mins
    /// as f32, indexed `row·bpr + block` (rows relative to the row block).
    #[derive(Default)]
    struct PackedW {
        u: Vec<[u8; 32]>,
        /// Each scale repeated over 8 lanes, so the per-pair scale product is one vector
        /// multiply of two loaded vectors.
        d: Vec<[f32; 8]>,
        m: Vec<f32>,
    }

    /// A token tile's activations prepared once: values, the lane sums of `−OFF·y` (empty for
    /// formats without an offset), scales and Q8_1 block sums as f32, indexed `t·bpr + block`.
    #[derive(Default)]
    struct PackedA {
        y: Vec<[i8; 32]>,
        neg: Vec<[i32; 8]>,
        /// Each scale repeated over 8 lanes (see [`PackedW::d`]).
        d: Vec<[f32; 8]>,
        /// Block sums transposed, `block·nt + t`, so a tile's tokens are adjacent.
        s: Vec<f32>,
    }

    /// Unpacks rows `r0..r1` of `w` into `p`.
    ///
    /// # Safety
    /// AVX2 and F16C must be available.
    #[inline(always)]
    unsafe fn pack_w<W: WBlock>(w: &[W], bpr: usize, r0: usize, r1: usize, p: &mut PackedW) {
        let blocks = &w[r0 * bpr..r1 * bpr];
        p.u.clear();
        p.d.clear();
        p.m.clear();
        for wb in blocks {
            let mut u = [0u8; 32];
            // SAFETY: 32-byte store into `u`; AVX2/F16C (caller).
            unsafe {
                _mm256_storeu_si256(u.as_mut_ptr().cast(), wb.codes());
                p.d.push([h2f(wb.d_bits()); 8]);
                if W::MIN {
                    p.m.push(h2f(wb.m_bits()));
                }
            }
            p.u.push(u);
        }
    }

    /// Prepares tokens `t0..t0 + nt` of `a` in `p` for weights of type `W`.
    ///
    /// # Safety
    /// AVX2 and F16C must be available.
    #[inline(always)]
    unsafe fn pack_a<W: WBlock, A: ABlock>(
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        p: &mut PackedA,
    ) {
        let blocks = &a[t0 * bpr..(t0 + nt) * bpr];
        p.y.clear();
        p.neg.clear();
        p.d.clear();
        p.s.clear();
        for ab in blocks {
            p.y.push(*ab.qs());
            // SAFETY: loads the 32 values of `ab`, 32-byte store into `n`; AVX2/F16C (caller).
            unsafe {
                if W::OFF != 0 {
                    let y = _mm256_loadu_si256(ab.qs().as_ptr().cast());
                    let mut n = [0i32; 8];
                    _mm256_storeu_si256(n.as_mut_ptr().cast(), Avx2Dot::neg_off(W::OFF, y));
                    p.neg.push(n);
                }
                p.d.push([h2f(ab.d_bits()); 8]);
            }
        }
        if W::MIN {
            p.s.resize(blocks.len(), 0.0);
            for (t, row) in blocks.chunks_exact(bpr).enumerate() {
                for (b, ab) in row.iter().enumerate() {
                    // SAFETY: F16C (caller).
                    p.s[b * nt + t] = unsafe { h2f(ab.s_bits()) };
                }
            }
        }
    }

    /// One tile from packed operands: rows `r..r + NR` of `pw` against tokens `t..t + NT` of
    /// `pa`, written to `o[t'·stride + r']` (t', r' relative to the tile). Same arithmetic per
    /// (row, token) as [`tile`].
    ///
    /// # Safety
    /// The instruction set of `D` plus AVX2/FMA/F16C must be available; the tile lies inside
    /// the packed buffers and `o` (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile_packed<W: WBlock, D: IntDot, const NR: usize, const NT: usize>(
        pw: &PackedW,
        r: usize,
        pa: &PackedA,
        t: usize,
        nt: usize,
        bpr: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        const { assert!(NT <= 4) };
        // SAFETY: indices (r + i)·bpr + b and (t + j)·bpr + b with i < NR, j < NT, b < bpr
        // are inside the packed buffers by the caller's contract; features likewise.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NT]; NR];
            // Lane j: the running Σ m_w·s_a of token j, one vector op per row and block
            // (lane-wise multiply then add round exactly as the scalar sum in the row dot).
            let mut summs = [_mm_setzero_ps(); NR];
            for b in 0..bpr {
                let mut y = [_mm256_setzero_si256(); NT];
                let mut init = [_mm256_setzero_si256(); NT];
                let mut da = [_mm256_setzero_ps(); NT];
                for j in 0..NT {
                    let k = (t + j) * bpr + b;
                    y[j] = _mm256_loadu_si256(pa.y.get_unchecked(k).as_ptr().cast());
                    if W::OFF != 0 {
                        init[j] = _mm256_loadu_si256(pa.neg.get_unchecked(k).as_ptr().cast());
                    }
                    da[j] = _mm256_loadu_ps(pa.d.get_unchecked(k).as_ptr());
                }
                let sa = if !W::MIN {
                    _mm_setzero_ps()
                } else if NT == 4 {
                    _mm_loadu_ps(pa.s.as_ptr().add(b * nt + t))
                } else {
                    let mut v = [0.0f32; 4];
                    for (j, x) in v.iter_mut().enumerate().take(NT) {
                        *x = *pa.s.get_unchecked(b * nt + t + j);
                    }
                    _mm_loadu_ps(v.as_ptr())
                };
                for i in 0..NR {
                    let k = (r + i) * bpr + b;
                    let u = _mm256_loadu_si256(pw.u.get_unchecked(k).as_ptr().cast());
                    let dw = _mm256_loadu_ps(pw.d.get_unchecked(k).as_ptr());
                    if W::MIN {
                        let mw = _mm_set1_ps(*pw.m.get_unchecked(k));
                        summs[i] = _mm_add_ps(summs[i], _mm_mul_ps(mw, sa));
                    }
                    for j in 0..NT {
                        let lanes = D::dot_add(init[j], u, y[j]);
                        let dd = _mm256_mul_ps(dw, da[j]);
                        acc[i][j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[i][j]);
                    }
                }
            }
            for i in 0..NR {
                let mut sm = [0.0f32; 4];
                _mm_storeu_ps(sm.as_mut_ptr(), summs[i]);
                for j in 0..NT {
                    let v = hsum(acc[i][j]);
                    *o.get_unchecked_mut(j * stride + i) = if W::MIN { v + sm[j] } else { v };
                }
            }
        }
    }

    /// Tokens `t0..t0 + nt` against every row, into `o[t·stride + r]` (t relative to t0): the
    /// activations are prepared once, and each block of [`ROW_BLOCK`] weight rows is unpacked
    /// once and then served to every tile of tokens. Tokens are the outer loop inside a row
    /// block, so one tile's activations stay in L1 while the row tiles pass (the other order,
    /// streaming every token's activations from L2 per row tile, was about 5 % slower on Q8_0).
    ///
    /// # Safety
    /// The instruction set of `D` plus AVX2/FMA/F16C must be available.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn batch<W: WBlock, A: ABlock, D: IntDot, const NR: usize, const NT: usize>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        rows: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        assert!(rows * bpr <= w.len() && (t0 + nt) * bpr <= a.len());
        assert!(nt == 0 || rows == 0 || (nt - 1) * stride + rows <= o.len());
        let mut pa = PackedA::default();
        let mut pw = PackedW::default();
        // SAFETY: features guaranteed by the caller; every tile below stays inside rows
        // r0..r1 of the packed row block, tokens 0..nt of the packed tile and `o` (asserted).
        unsafe {
            pack_a::<W, A>(a, bpr, t0, nt, &mut pa);
            for r0 in (0..rows).step_by(ROW_BLOCK) {
                let r1 = (r0 + ROW_BLOCK).min(rows);
                pack_w(w, bpr, r0, r1, &mut pw);
                let mut t = 0;
                while t < nt {
                    let full_t = t + NT <= nt;
                    let mut r = 0;
                    while r < r1 - r0 {
                        let wide = r + NR <= r1 - r0;
                        let ot = &mut o[t * stride + r0 + r..];
                        match (wide, full_t) {
                            (true, true) => {
                                tile_packed::<W, D, NR, NT>(&pw, r, &pa, t, nt, bpr, ot, stride)
                            }
                            (true, false) => {
                                tile_packed::<W, D, NR, 1>(&pw, r, &pa, t, nt, bpr, ot, stride)
                            }
                            (false, true) => {
                                tile_packed::<W, D, 1, NT>(&pw, r, &pa, t, nt, bpr, ot, stride)
                            }
                            (false, false) => {
                                tile_packed::<W, D, 1, 1>(&pw, r, &pa, t, nt, bpr, ot, stride)
                            }
                        }
                        r += if wide { NR } else { 1 };
                    }
                    t += if full_t { NT } else { 1 };
                }
            }
        }
    }

    /// [`batch`] compiled for AVX2.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn batch_avx2<W: WBlock, A: ABlock>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        rows: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: features enabled on this function.
        unsafe { batch::<W, A, Avx2Dot, 2, 4>(w, a, bpr, t0, nt, rows, o, stride) }
    }

    /// [`batch`] compiled for AVX-512 VL + VNNI.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512 F/VL/VNNI must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn batch_vnni<W: WBlock, A: ABlock>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        rows: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: features enabled on this function.
        unsafe { batch::<W, A, VnniDot, 4, 4>(w, a, bpr, t0, nt, rows, o, stride) }
    }

    /// [`block`] compiled for AVX2.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_avx2<W: WBlock, A: ABlock>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // 16 ymm registers: 2×4 accumulators, 2 code and 2 scale vectors, token temporaries.
        // SAFETY: features enabled on this function.
        unsafe { block::<W, A, Avx2Dot, 2, 4>(w, a, bpr, t0, nt, r0, r1, o, stride) }
    }

    /// [`block`] compiled for AVX-512 VL + VNNI.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512 F/VL/VNNI must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn block_vnni<W: WBlock, A: ABlock>(
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // 32 registers: 4×4 accumulators, 4 code and 4 scale vectors, token temporaries.
        // SAFETY: features enabled on this function.
        unsafe { block::<W, A, VnniDot, 4, 4>(w, a, bpr, t0, nt, r0, r1, o, stride) }
    }

    /// Dispatches one block of work to `isa`'s compiled body.
    #[allow(clippy::too_many_arguments)]
    fn run<W: WBlock, A: ABlock>(
        isa: Isa,
        w: &[W],
        a: &[A],
        bpr: usize,
        t0: usize,
        nt: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: `matmul` is only called with an `isa` that `available()` confirmed.
        unsafe {
            match isa {
                Isa::Avx2 => block_avx2(w, a, bpr, t0, nt, r0, r1, o, stride),
                Isa::Vnni => block_vnni(w, a, bpr, t0, nt, r0, r1, o, stride),
            }
        }
    }

    /// Tokens of a task from which the packed kernel ([`batch`]) runs instead of the direct
    /// one ([`block`]): unpacking a row block once pays off only when more tokens than one
    /// tile (4) share it. Both give the same bits.
    const PACK_FROM: usize = 8;

    /// `out[t·rows + r] = w[r] · a[t]` with `isa`'s kernel, which the caller checked is
    /// available, through the scheduler (`schedule::run`).
    pub(super) fn matmul<W: WBlock, A: ABlock>(
        isa: Isa,
        w: &[W],
        bpr: usize,
        a: &[A],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        assert!(
            isa.available(),
            "tiled legacy matmul: {isa:?} not available"
        );
        assert!(
            !(W::WIDE && isa == Isa::Avx2),
            "tiled legacy matmul: 8-bit codes need the VNNI variant"
        );
        let shape = Shape {
            rows,
            n_tok,
            act_bytes: bpr * size_of::<A>(),
            tok_align: 4,
        };
        schedule::run(&shape, out, |task, o, stride| {
            run_task(isa, w, a, bpr, task, o, stride)
        })
    }

    /// One scheduler task with `isa`'s kernel: rows `task.r0..task.r1` of tokens
    /// `task.t0..task.t0 + task.nt` into `o[t·stride + r − task.r0]`.
    fn run_task<W: WBlock, A: ABlock>(
        isa: Isa,
        w: &[W],
        a: &[A],
        bpr: usize,
        task: schedule::Task,
        o: &mut [f32],
        stride: usize,
    ) {
        let schedule::Task { t0, nt, r0, r1 } = task;
        if nt >= PACK_FROM {
            // The packed kernel walks rows from the start of the slice it is given.
            let wr = &w[r0 * bpr..r1 * bpr];
            // SAFETY: `isa` is available (asserted by the callers of `run_task`).
            unsafe {
                match isa {
                    Isa::Avx2 => batch_avx2(wr, a, bpr, t0, nt, r1 - r0, o, stride),
                    Isa::Vnni => batch_vnni(wr, a, bpr, t0, nt, r1 - r0, o, stride),
                }
            }
        } else {
            run(isa, w, a, bpr, t0, nt, r0, r1, o, stride);
        }
    }

    /// The Q8_0 product: tasks of [`PACK_FROM`]+ tokens run the VNNI kernel where `vnni`,
    /// the others (decoding, a token or two, bound by memory, where the one-row walk of
    /// [`q8x`] measured faster than the 4-row tile's four interleaved streams) the AVX2 one-row
    /// tile; both give the same lanes, hence the same bits. `vnni` must mean [`Isa::Vnni`] is
    /// available, and [`q8x::available`] must hold.
    pub(super) fn matmul_q8_0(
        vnni: bool,
        w: &[BlockQ8_0],
        bpr: usize,
        a: &[BlockQ8_0],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        assert!(!vnni || Isa::Vnni.available(), "Q8_0 matmul: no VNNI");
        let shape = Shape {
            rows,
            n_tok,
            act_bytes: bpr * size_of::<BlockQ8_0>(),
            tok_align: q8x::NT,
        };
        schedule::run(&shape, out, |task, o, stride| {
            if vnni && task.nt >= PACK_FROM {
                run_task(Isa::Vnni, w, a, bpr, task, o, stride)
            } else {
                let schedule::Task { t0, nt, r0, r1 } = task;
                q8x::tile(w, bpr, a, t0, nt, stride, r0, r1, o)
            }
        })
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::x86::{self, ABlock, WBlock};
    use super::*;
    use crate::model::kernels::{quantize_acts, ActFormat, Acts};
    use longquant_quants::block::{q4_0, q4_1, q5_0, q5_1, q8_1};
    use longquant_quants::simd::kernels;

    /// Deterministic values in about [−0.8·scale, 1.2·scale] (an uneven mean, so mins matter).
    fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.4) * 2.0 * scale
            })
            .collect()
    }

    type Entry<W, A> = fn(&Kernels, &[W], usize, &[A], usize, usize, &mut [f32]);

    fn same_bits(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    }

    /// Checks one format: the entry point, every tiled variant the host has and the generic
    /// driver against the scalar row-by-row reference dot (within 1e-5·Σ|w·a| per output) for
    /// 1..=9 tokens and odd row counts; the variants agree bitwise with each other and with the
    /// quants crate's AVX2 dot; each token alone gives the bits it gets inside a batch.
    #[allow(clippy::too_many_arguments)]
    fn check_format<W: WBlock + Copy, A: ABlock + Clone>(
        name: &str,
        zero: W,
        quant: fn(&[f32], &mut [W]),
        fmt: ActFormat,
        unpack: fn(Acts) -> Vec<A>,
        entry: Entry<W, A>,
        table_dot: fn(&Kernels, &[W], &[A]) -> f32,
        ref_dot: fn(&[W], &[A]) -> f32,
    ) {
        let k = kernels();
        let isas: Vec<_> = x86::supported()
            .into_iter()
            .filter(|&i| !W::WIDE || i == x86::Isa::Vnni)
            .collect();
        for (rows, bpr) in [(1usize, 1usize), (7, 3), (13, 18), (37, 5), (21, 2)] {
            let cols = bpr * 32;
            for n_tok in 1..=9 {
                let seed = (rows * 31 + n_tok) as u64;
                let wf = data(rows * cols, seed, 0.5);
                let af = data(n_tok * cols, seed + 1000, 3.0);
                let mut w = vec![zero; rows * bpr];
                for (x, y) in wf.chunks(cols).zip(w.chunks_mut(bpr)) {
                    quant(x, y);
                }
                let a = unpack(quantize_acts(fmt, &af, cols));
                let wr = |r: usize| &w[r * bpr..(r + 1) * bpr];
                let at = |t: usize| &a[t * bpr..(t + 1) * bpr];
                let close = |got: &[f32], what: &str| {
                    for t in 0..n_tok {
                        for r in 0..rows {
                            let want = ref_dot(wr(r), at(t));
                            let mag: f32 = wf[r * cols..(r + 1) * cols]
                                .iter()
                                .zip(&af[t * cols..(t + 1) * cols])
                                .map(|(x, y)| (x * y).abs())
                                .sum();
                            let g = got[t * rows + r];
                            assert!(
                                (g - want).abs() <= 1e-5 * mag,
                                "{name} {what}: rows {rows} bpr {bpr} n_tok {n_tok}, token {t} \
                                 row {r}: {g} vs {want} (Σ|w·a| {mag})"
                            );
                        }
                    }
                };

                let mut out = vec![f32::NAN; n_tok * rows];
                entry(k, &w, bpr, &a, n_tok, rows, &mut out);
                close(&out, "entry");
                for t in 0..n_tok {
                    let mut one = vec![f32::NAN; rows];
                    entry(k, &w, bpr, at(t), 1, rows, &mut one);
                    assert!(
                        same_bits(&one, &out[t * rows..(t + 1) * rows]),
                        "{name}: token {t} of {n_tok} differs alone vs batched"
                    );
                }

                for &isa in &isas {
                    let mut v = vec![f32::NAN; n_tok * rows];
                    x86::matmul(isa, &w, bpr, &a, n_tok, rows, &mut v);
                    close(&v, &format!("{isa:?}"));
                    assert!(same_bits(&v, &out), "{name}: {isa:?} differs bitwise");
                }
                if k.name == "avx2" && !isas.is_empty() {
                    let rowwise: Vec<f32> = (0..n_tok)
                        .flat_map(|t| (0..rows).map(move |r| (t, r)))
                        .map(|(t, r)| table_dot(k, wr(r), at(t)))
                        .collect();
                    assert!(
                        same_bits(&rowwise, &out),
                        "{name}: differs from the AVX2 dot"
                    );
                }

                let mut g = vec![f32::NAN; n_tok * rows];
                mm(
                    &w,
                    bpr,
                    n_tok,
                    rows,
                    bpr * size_of::<A>(),
                    &mut g,
                    |x, t| table_dot(k, x, at(t)),
                );
                close(&g, "generic");
            }
        }
    }

    fn q8_0s(a: Acts) -> Vec<BlockQ8_0> {
        match a {
            Acts::Q8_0(v) => v,
            _ => Vec::new(),
        }
    }

    fn q8_1s(a: Acts) -> Vec<BlockQ8_1> {
        match a {
            Acts::Q8_1(v) => v,
            _ => Vec::new(),
        }
    }

    #[test]
    fn q4_0_matches_row_dots() {
        check_format(
            "Q4_0",
            BlockQ4_0::ZERO,
            q4_0::quantize_row_q4_0_ref,
            ActFormat::Q8_0,
            q8_0s,
            matmul_q4_0,
            |k, w, a| (k.vec_dot_q4_0_q8_0)(w, a),
            q4_0::vec_dot_q4_0_q8_0_ref,
        );
    }

    #[test]
    fn q5_0_matches_row_dots() {
        check_format(
            "Q5_0",
            BlockQ5_0::ZERO,
            q5_0::quantize_row_q5_0_ref,
            ActFormat::Q8_0,
            q8_0s,
            matmul_q5_0,
            |k, w, a| (k.vec_dot_q5_0_q8_0)(w, a),
            q5_0::vec_dot_q5_0_q8_0_ref,
        );
    }

    #[test]
    fn q8_0_matches_row_dots() {
        // The reference bits are the AVX2 sign-trick tile's (4-byte lane groups, as ggml and
        // vpdpbusd group them), not the quants crate's widening dot, which groups differently.
        if !crate::model::kernels::q8x::available() {
            return;
        }
        check_format(
            "Q8_0",
            BlockQ8_0::ZERO,
            longquant_quants::block::q8_0::quantize_row_q8_0_ref,
            ActFormat::Q8_0,
            q8_0s,
            matmul_q8_0,
            |_, w, a| crate::model::kernels::q8x::dot(w, a),
            longquant_quants::block::q8_0::vec_dot_q8_0_q8_0_ref,
        );
    }

    #[test]
    fn q4_1_matches_row_dots() {
        check_format(
            "Q4_1",
            BlockQ4_1::ZERO,
            q4_1::quantize_row_q4_1_ref,
            ActFormat::Q8_1,
            q8_1s,
            matmul_q4_1,
            |k, w, a| (k.vec_dot_q4_1_q8_1)(w, a),
            q8_1::vec_dot_q4_1_q8_1_ref,
        );
    }

    #[test]
    fn q5_1_matches_row_dots() {
        check_format(
            "Q5_1",
            BlockQ5_1::ZERO,
            q5_1::quantize_row_q5_1_ref,
            ActFormat::Q8_1,
            q8_1s,
            matmul_q5_1,
            |k, w, a| (k.vec_dot_q5_1_q8_1)(w, a),
            q8_1::vec_dot_q5_1_q8_1_ref,
        );
    }

    /// The same bits whatever the thread count, hence whatever the scheduler's split (token
    /// tiles only, rows × tokens through the staging buffer, rows only for one token), for
    /// every format's entry point (tiled where the host has it).
    #[test]
    fn same_bits_at_any_thread_count() {
        fn run<W: Sync, A: Sync>(name: &str, e: Entry<W, A>, w: &[W], a: &[A], bpr: usize) {
            let rows = w.len() / bpr;
            for n_tok in [1usize, 3, 37, 300] {
                let at = &a[..n_tok * bpr];
                let go = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool");
                    let mut out = vec![f32::NAN; n_tok * rows];
                    pool.install(|| e(kernels(), w, bpr, at, n_tok, rows, &mut out));
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                let one = go(1);
                for threads in [2, 3, 16] {
                    assert!(one == go(threads), "{name} n_tok {n_tok} threads {threads}");
                }
            }
        }
        let (bpr, rows) = (4usize, 70usize);
        let cols = bpr * 32;
        let wf = data(rows * cols, 1, 0.5);
        let af = data(300 * cols, 2, 3.0);
        let a0 = q8_0s(quantize_acts(ActFormat::Q8_0, &af, cols));
        let a1 = q8_1s(quantize_acts(ActFormat::Q8_1, &af, cols));
        fn quant<W: Copy>(wf: &[f32], cols: usize, zero: W, q: fn(&[f32], &mut [W])) -> Vec<W> {
            let mut w = vec![zero; wf.len() / 32];
            for (x, y) in wf.chunks(cols).zip(w.chunks_mut(cols / 32)) {
                q(x, y);
            }
            w
        }
        let w = quant(&wf, cols, BlockQ4_0::ZERO, q4_0::quantize_row_q4_0_ref);
        run("Q4_0", matmul_q4_0, &w, &a0, bpr);
        let w = quant(&wf, cols, BlockQ5_0::ZERO, q5_0::quantize_row_q5_0_ref);
        run("Q5_0", matmul_q5_0, &w, &a0, bpr);
        let w = quant(
            &wf,
            cols,
            BlockQ8_0::ZERO,
            longquant_quants::block::q8_0::quantize_row_q8_0_ref,
        );
        run("Q8_0", matmul_q8_0, &w, &a0, bpr);
        let w = quant(&wf, cols, BlockQ4_1::ZERO, q4_1::quantize_row_q4_1_ref);
        run("Q4_1", matmul_q4_1, &w, &a1, bpr);
        let w = quant(&wf, cols, BlockQ5_1::ZERO, q5_1::quantize_row_q5_1_ref);
        run("Q5_1", matmul_q5_1, &w, &a1, bpr);
    }
}
