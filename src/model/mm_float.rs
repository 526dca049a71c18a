//! Matrix products of float weights (F32, F16, BF16) with f32 activations (rounded through the
//! weight's type by `kernels::quantize_acts` for F16/BF16, as ggml converts them).
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`.
//!
//! On x86-64 with AVX-512 (or AVX2 + FMA + F16C) a register-tiled kernel computes a tile of
//! `RM` weight rows × `RN` tokens at once: per step along `cols` it loads `RM` weight vectors
//! (F16/BF16 widened on load) and `RN` activation vectors and issues `RM·RN` FMAs, so each load
//! feeds several products instead of one (the idea of llamafile's tinyBLAS `sgemm`, which ggml
//! uses for these types). Elsewhere the generic row-by-row driver `kernels::mm` runs. Both go
//! through the one scheduler (`schedule::run`), which decides the rows × tokens of each call.
//!
//! Determinism: every (row, token) pair owns one accumulator register whose lane `j` sums
//! `w[k]·a[k]` for `k ≡ j (mod lanes)` in increasing `k` (the ragged end is a masked or
//! zero-padded load into the same lanes), followed by one fixed horizontal reduction. Nothing
//! depends on the tile shape, where a row or token falls in a tile, or how many tokens are
//! multiplied together, so decoding one token at a time gives bit-identical logits to a batch.
use super::kernels::mm;
use half::{bf16, f16};
use longquant_quants::simd::Kernels;

/// `out[t * rows + r] = w[r] · a[t]` for f32 weights of `cols` values per row.
pub(crate) fn matmul_f32(
    k: &Kernels,
    w: &[f32],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::Isa::detect() {
        return x86::matmul(isa, w, cols, a, n_tok, rows, out);
    }
    mm(w, cols, n_tok, rows, 4 * cols, out, |wr, t| {
        (k.vec_dot_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for f16 weights of `cols` values per row.
pub(crate) fn matmul_f16(
    k: &Kernels,
    w: &[f16],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::Isa::detect() {
        return x86::matmul(isa, w, cols, a, n_tok, rows, out);
    }
    mm(w, cols, n_tok, rows, 4 * cols, out, |wr, t| {
        (k.vec_dot_f16_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for bf16 weights of `cols` values per row.
pub(crate) fn matmul_bf16(
    k: &Kernels,
    w: &[bf16],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = x86::Isa::detect() {
        return x86::matmul(isa, w, cols, a, n_tok, rows, out);
    }
    mm(w, cols, n_tok, rows, 4 * cols, out, |wr, t| {
        (k.vec_dot_bf16_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::model::schedule::{self, Shape};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Which tiled kernel family runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Isa {
        /// 16-lane accumulators, 4 rows × 6 tokens per tile (24 of the 32 zmm registers).
        Avx512,
        /// 8-lane accumulators, 4 rows × 3 tokens per tile (12 of the 16 ymm registers).
        Avx2,
    }

    impl Isa {
        /// The best family this CPU runs, or `None` for the portable fallback.
        pub(super) fn detect() -> Option<Isa> {
            if Isa::Avx512.available() {
                Some(Isa::Avx512)
            } else if Isa::Avx2.available() {
                Some(Isa::Avx2)
            } else {
                None
            }
        }

        /// Whether this CPU has the instructions of `self`.
        pub(super) fn available(self) -> bool {
            let f = longquant_quants::simd::cpu::features();
            match self {
                Isa::Avx512 => f.avx512f && f.avx512bw && f.avx512vl && f.fma && f.f16c,
                Isa::Avx2 => f.avx2_fma_f16c(),
            }
        }
    }

    /// A weight element type widened exactly to f32 vectors. Activations use the f32 impl.
    pub(super) trait Elem: Copy + Sync {
        /// 16 values at `p`.
        ///
        /// # Safety
        /// AVX-512F/BW/VL; `p..p + 16` readable.
        unsafe fn load16(p: *const Self) -> __m512;
        /// The first `n < 16` values at `p`, zeros in lanes `n..16`.
        ///
        /// # Safety
        /// AVX-512F/BW/VL; `p..p + n` readable.
        unsafe fn load16_part(p: *const Self, n: usize) -> __m512;
        /// 8 values at `p`.
        ///
        /// # Safety
        /// AVX2/F16C; `p..p + 8` readable.
        unsafe fn load8(p: *const Self) -> __m256;
        /// The first `n < 8` values at `p`, zeros in lanes `n..8`.
        ///
        /// # Safety
        /// AVX2/F16C; `p..p + n` readable.
        unsafe fn load8_part(p: *const Self, n: usize) -> __m256;
    }

    /// AVX-512 lane mask of the first `n < 16` lanes.
    #[inline]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// The first `n < 8` 16-bit values at `p`, zero-padded to 8 (there is no masked 16-bit load
    /// in AVX2).
    ///
    /// # Safety
    /// `p..p + n` readable.
    #[inline]
    unsafe fn pad8_u16(p: *const u16, n: usize) -> [u16; 8] {
        let mut buf = [0u16; 8];
        // SAFETY: the caller guarantees `n` readable values; `n < 8` fit in `buf`.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(8)) };
        buf
    }

    impl Elem for f32 {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: 16 readable floats (caller); AVX-512F.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16_part(p: *const f32, n: usize) -> __m512 {
            // SAFETY: masked-off lanes are not read (no fault); `n` readable floats (caller).
            unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: 8 readable floats (caller); AVX.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8_part(p: *const f32, n: usize) -> __m256 {
            // SAFETY: maskload reads only the lanes whose mask is set (lanes < n, readable by the
            // caller's guarantee) and zeroes the rest; AVX2.
            unsafe {
                let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx);
                _mm256_maskload_ps(p, m)
            }
        }
    }

    impl Elem for f16 {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16(p: *const f16) -> __m512 {
            // SAFETY: 16 readable halves = 32 bytes (caller); AVX-512F converts them exactly.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16_part(p: *const f16, n: usize) -> __m512 {
            // SAFETY: masked 16-bit load (AVX-512BW/VL) reads only lanes < n (readable, caller).
            unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n), p.cast())) }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: 8 readable halves = 16 bytes (caller); F16C converts them exactly.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8_part(p: *const f16, n: usize) -> __m256 {
            // SAFETY: `n` readable halves (caller) copied to a padded local; F16C.
            unsafe {
                let buf = pad8_u16(p.cast(), n);
                _mm256_cvtph_ps(_mm_loadu_si128(buf.as_ptr().cast()))
            }
        }
    }

    impl Elem for bf16 {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16(p: *const bf16) -> __m512 {
            // SAFETY: 16 readable bf16 = 32 bytes (caller). A bf16 is the top half of an f32,
            // so widening to 32 bits and shifting left 16 is exact.
            unsafe {
                let h = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        #[inline]
        unsafe fn load16_part(p: *const bf16, n: usize) -> __m512 {
            // SAFETY: masked 16-bit load (AVX-512BW/VL) reads only lanes < n (readable, caller).
            unsafe {
                let h = _mm256_maskz_loadu_epi16(mask16(n), p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8(p: *const bf16) -> __m256 {
            // SAFETY: 8 readable bf16 = 16 bytes (caller); exact widening as in `load16`.
            unsafe {
                let h = _mm_loadu_si128(p.cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load8_part(p: *const bf16, n: usize) -> __m256 {
            // SAFETY: `n` readable bf16 (caller) copied to a padded local; AVX2.
            unsafe {
                let buf = pad8_u16(p.cast(), n);
                let h = _mm_loadu_si128(buf.as_ptr().cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
        }
    }

    /// Σ of the 8 lanes in one fixed order: halves, then pairs, then the last two.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ of the 16 lanes in one fixed order: the two 256-bit halves, then [`hsum256`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    fn hsum512(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum256(_mm256_add_ps(lo, hi))
    }

    /// `o[i][j] = w[i] · a[j]` for `M` weight rows and `N` token rows, all `cols` long:
    /// one 16-lane accumulator per pair (see the module comment for the summation order).
    ///
    /// # Safety
    /// AVX-512F/BW/VL, FMA and F16C must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile512<W: Elem, const M: usize, const N: usize>(
        w: &[W],
        a: &[f32],
        cols: usize,
    ) -> [[f32; N]; M] {
        assert!(w.len() >= M * cols && a.len() >= N * cols);
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let full = cols / 16 * 16;
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        // SAFETY: every load below reads `w[i·cols + k..]` / `a[j·cols + k..]` with i < M,
        // j < N and at most `cols − k` values (16 while k < full, then `cols − full`), inside
        // the slices by the assertion; the CPU features are the caller's guarantee.
        unsafe {
            let mut k = 0;
            while k < full {
                let av: [__m512; N] = std::array::from_fn(|j| f32::load16(ap.add(j * cols + k)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let wv = W::load16(wp.add(i * cols + k));
                    for (c, x) in row.iter_mut().zip(&av) {
                        *c = _mm512_fmadd_ps(wv, *x, *c);
                    }
                }
                k += 16;
            }
            let rest = cols - full;
            if rest > 0 {
                let av: [__m512; N] =
                    std::array::from_fn(|j| f32::load16_part(ap.add(j * cols + full), rest));
                for (i, row) in acc.iter_mut().enumerate() {
                    let wv = W::load16_part(wp.add(i * cols + full), rest);
                    for (c, x) in row.iter_mut().zip(&av) {
                        *c = _mm512_fmadd_ps(wv, *x, *c);
                    }
                }
            }
        }
        // Plain loops rather than `map` closures, which stay out of line.
        let mut out = [[0.0f32; N]; M];
        for (o, row) in out.iter_mut().zip(&acc) {
            for (x, v) in o.iter_mut().zip(row) {
                *x = hsum512(*v);
            }
        }
        out
    }

    /// [`tile512`] with 8-lane accumulators.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile256<W: Elem, const M: usize, const N: usize>(
        w: &[W],
        a: &[f32],
        cols: usize,
    ) -> [[f32; N]; M] {
        assert!(w.len() >= M * cols && a.len() >= N * cols);
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let full = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        // SAFETY: as in `tile512`, with 8-value steps.
        unsafe {
            let mut k = 0;
            while k < full {
                let av: [__m256; N] = std::array::from_fn(|j| f32::load8(ap.add(j * cols + k)));
                for (i, row) in acc.iter_mut().enumerate() {
                    let wv = W::load8(wp.add(i * cols + k));
                    for (c, x) in row.iter_mut().zip(&av) {
                        *c = _mm256_fmadd_ps(wv, *x, *c);
                    }
                }
                k += 8;
            }
            let rest = cols - full;
            if rest > 0 {
                let av: [__m256; N] =
                    std::array::from_fn(|j| f32::load8_part(ap.add(j * cols + full), rest));
                for (i, row) in acc.iter_mut().enumerate() {
                    let wv = W::load8_part(wp.add(i * cols + full), rest);
                    for (c, x) in row.iter_mut().zip(&av) {
                        *c = _mm256_fmadd_ps(wv, *x, *c);
                    }
                }
            }
        }
        // Plain loops rather than `map` closures, which stay out of line.
        let mut out = [[0.0f32; N]; M];
        for (o, row) in out.iter_mut().zip(&acc) {
            for (x, v) in o.iter_mut().zip(row) {
                *x = hsum256(*v);
            }
        }
        out
    }

    /// Rows of a tile.
    const RM: usize = 4;
    /// Most tokens of a tile (AVX-512; AVX2 uses 3).
    const RN512: usize = 6;
    const RN256: usize = 3;

    /// One tile of `M` rows (`M` is [`RM`] or 1) starting at row `r` and `n ≤ RN` tokens
    /// starting at token `t`, stored at `o[(t − t_base)·stride + r − r_base]`.
    #[allow(clippy::too_many_arguments)]
    fn run_tile<W: Elem, const M: usize>(
        isa: Isa,
        w: &[W],
        cols: usize,
        a: &[f32],
        r: usize,
        t: usize,
        n: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        let wr = &w[r * cols..(r + M) * cols];
        let at = &a[t * cols..(t + n) * cols];
        macro_rules! go {
            ($f:ident, $n:literal) => {{
                // SAFETY: `isa` was checked `available()` by `matmul`'s caller chain.
                let v = unsafe { $f::<W, M, $n>(wr, at, cols) };
                for (i, row) in v.iter().enumerate() {
                    for (j, x) in row.iter().enumerate() {
                        o[j * stride + i] = *x;
                    }
                }
            }};
        }
        match (isa, n) {
            (Isa::Avx512, 6) => go!(tile512, 6),
            (Isa::Avx512, 5) => go!(tile512, 5),
            (Isa::Avx512, 4) => go!(tile512, 4),
            (Isa::Avx512, 3) => go!(tile512, 3),
            (Isa::Avx512, 2) => go!(tile512, 2),
            (Isa::Avx512, _) => go!(tile512, 1),
            (Isa::Avx2, 3) => go!(tile256, 3),
            (Isa::Avx2, 2) => go!(tile256, 2),
            (Isa::Avx2, _) => go!(tile256, 1),
        }
    }

    /// Rows `r0..r1` × tokens `t0..t0 + nt` into `o`, token `t` row `r` at
    /// `o[(t − t0)·stride + r − r0]`. Each group of [`RM`] rows stays in L1 while it meets every
    /// token of the range (the range's activations are sized to stay in L2).
    #[allow(clippy::too_many_arguments)]
    fn block<W: Elem>(
        isa: Isa,
        w: &[W],
        cols: usize,
        a: &[f32],
        t0: usize,
        nt: usize,
        r0: usize,
        r1: usize,
        o: &mut [f32],
        stride: usize,
    ) {
        let rn = match isa {
            Isa::Avx512 => RN512,
            Isa::Avx2 => RN256,
        };
        let mut r = r0;
        while r < r1 {
            let whole = r + RM <= r1;
            let mut t = 0;
            while t < nt {
                let n = rn.min(nt - t);
                let ot = &mut o[t * stride + r - r0..];
                if whole {
                    run_tile::<W, RM>(isa, w, cols, a, r, t0 + t, n, ot, stride);
                } else {
                    for i in 0..r1 - r {
                        run_tile::<W, 1>(isa, w, cols, a, r + i, t0 + t, n, &mut ot[i..], stride);
                    }
                }
                t += n;
            }
            r += if whole { RM } else { r1 - r };
        }
    }

    /// The tiled product through the scheduler (`schedule::run`). `isa` must be
    /// [`Isa::available`].
    pub(super) fn matmul<W: Elem>(
        isa: Isa,
        w: &[W],
        cols: usize,
        a: &[f32],
        n_tok: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let shape = Shape {
            rows,
            n_tok,
            act_bytes: 4 * cols,
            tok_align: match isa {
                Isa::Avx512 => RN512,
                Isa::Avx2 => RN256,
            },
        };
        schedule::run(&shape, out, |task, o, stride| {
            block(
                isa, w, cols, a, task.t0, task.nt, task.r0, task.r1, o, stride,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longquant_quants::simd::kernels;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `out` against an f64 reference within 1e-5·Σ|w·a| per output.
    fn check(wf: &[f32], cols: usize, a: &[f32], n_tok: usize, rows: usize, out: &[f32]) {
        for t in 0..n_tok {
            for r in 0..rows {
                let (mut s, mut m) = (0f64, 0f64);
                for c in 0..cols {
                    let p = wf[r * cols + c] as f64 * a[t * cols + c] as f64;
                    s += p;
                    m += p.abs();
                }
                let got = out[t * rows + r] as f64;
                assert!(
                    (got - s).abs() <= 1e-5 * m + 1e-30,
                    "cols {cols} n_tok {n_tok} rows {rows} t {t} r {r}: {got} vs {s}"
                );
            }
        }
    }

    const COLS: [usize; 10] = [1, 5, 7, 8, 15, 16, 17, 33, 64, 100];
    const ROWS: [usize; 8] = [1, 2, 3, 4, 5, 7, 13, 37];

    /// Runs `f(cols, n_tok, rows, w_seed, a)` over the odd shapes.
    fn shapes(mut f: impl FnMut(usize, usize, usize, u64, &[f32])) {
        for &cols in &COLS {
            for n_tok in 1..=9 {
                for &rows in &ROWS {
                    let a = values(n_tok * cols, 7 + cols as u64 * 31 + n_tok as u64);
                    f(cols, n_tok, rows, (cols * 1000 + rows) as u64, &a);
                }
            }
        }
    }

    #[test]
    fn f32_matches_reference() {
        shapes(|cols, n_tok, rows, seed, a| {
            let w = values(rows * cols, seed);
            let mut out = vec![f32::NAN; n_tok * rows];
            matmul_f32(kernels(), &w, cols, a, n_tok, rows, &mut out);
            check(&w, cols, a, n_tok, rows, &out);
        });
    }

    #[test]
    fn f16_matches_reference() {
        shapes(|cols, n_tok, rows, seed, a| {
            let w: Vec<f16> = values(rows * cols, seed)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let wf: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            let mut out = vec![f32::NAN; n_tok * rows];
            matmul_f16(kernels(), &w, cols, a, n_tok, rows, &mut out);
            check(&wf, cols, a, n_tok, rows, &out);
        });
    }

    #[test]
    fn bf16_matches_reference() {
        shapes(|cols, n_tok, rows, seed, a| {
            let w: Vec<bf16> = values(rows * cols, seed)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let wf: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            let mut out = vec![f32::NAN; n_tok * rows];
            matmul_bf16(kernels(), &w, cols, a, n_tok, rows, &mut out);
            check(&wf, cols, a, n_tok, rows, &out);
        });
    }

    /// Every tiled kernel family the host runs, against the reference, for all three types.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_isa_matches_reference() {
        for isa in [x86::Isa::Avx512, x86::Isa::Avx2] {
            if !isa.available() {
                continue;
            }
            shapes(|cols, n_tok, rows, seed, a| {
                let w = values(rows * cols, seed);
                let mut out = vec![f32::NAN; n_tok * rows];
                x86::matmul(isa, &w, cols, a, n_tok, rows, &mut out);
                check(&w, cols, a, n_tok, rows, &out);
                let h: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
                let hf: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
                x86::matmul(isa, &h, cols, a, n_tok, rows, &mut out);
                check(&hf, cols, a, n_tok, rows, &out);
                let b: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
                let bf: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
                x86::matmul(isa, &b, cols, a, n_tok, rows, &mut out);
                check(&bf, cols, a, n_tok, rows, &out);
            });
        }
    }

    /// Bit-identity: each token's outputs are the same whether it is multiplied alone, in any
    /// sub-batch, or in a full batch (with tiles of several sizes and rows at every position
    /// in a tile), for every kernel path.
    fn alone_vs_batch<W: Copy>(
        w: &[W],
        cols: usize,
        rows: usize,
        mul: impl Fn(&[W], &[f32], usize, &mut [f32]),
    ) {
        let n_tok = 41;
        let a = values(n_tok * cols, 99 + cols as u64);
        let mut full = vec![0.0; n_tok * rows];
        mul(w, &a, n_tok, &mut full);
        for start in [0usize, 1, 5, 13] {
            for len in [1usize, 2, 3, 4, 7, 9, 20] {
                let end = (start + len).min(n_tok);
                let mut part = vec![0.0; (end - start) * rows];
                mul(w, &a[start * cols..end * cols], end - start, &mut part);
                for (i, t) in (start..end).enumerate() {
                    let got = &part[i * rows..(i + 1) * rows];
                    let want = &full[t * rows..(t + 1) * rows];
                    for (r, (g, f)) in got.iter().zip(want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            f.to_bits(),
                            "cols {cols} rows {rows} token {t} (batch {start}..{end}) row {r}"
                        );
                    }
                }
            }
        }
        // Rows at another offset in the tile: the matrix without its first row gives the same
        // bits for the remaining rows.
        if rows > 1 {
            let mut shifted = vec![0.0; n_tok * (rows - 1)];
            mul(&w[cols..], &a, n_tok, &mut shifted);
            for t in 0..n_tok {
                for r in 1..rows {
                    assert_eq!(
                        shifted[t * (rows - 1) + r - 1].to_bits(),
                        full[t * rows + r].to_bits(),
                        "cols {cols} rows {rows} token {t} row {r} shifted"
                    );
                }
            }
        }
    }

    #[test]
    fn alone_equals_in_batch_bitwise() {
        for cols in [5usize, 16, 37, 100] {
            for rows in [1usize, 6, 37] {
                let w = values(rows * cols, 3 + rows as u64);
                let k = kernels();
                alone_vs_batch(&w, cols, rows, |w, a, n, o| {
                    matmul_f32(k, w, cols, a, n, w.len() / cols, o)
                });
                let h: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
                alone_vs_batch(&h, cols, rows, |w, a, n, o| {
                    matmul_f16(k, w, cols, a, n, w.len() / cols, o)
                });
                let b: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();
                alone_vs_batch(&b, cols, rows, |w, a, n, o| {
                    matmul_bf16(k, w, cols, a, n, w.len() / cols, o)
                });
                #[cfg(target_arch = "x86_64")]
                for isa in [x86::Isa::Avx512, x86::Isa::Avx2] {
                    if isa.available() {
                        alone_vs_batch(&w, cols, rows, |w, a, n, o| {
                            x86::matmul(isa, w, cols, a, n, w.len() / cols, o)
                        });
                    }
                }
            }
        }
    }

    /// The same bits on one rayon thread as on several, hence whatever the scheduler's split
    /// (token tiles only, rows × tokens through the staging buffer, rows only for one token).
    #[test]
    fn same_bits_at_any_thread_count() {
        let (cols, rows) = (70, 29);
        let w = values(rows * cols, 5);
        for n_tok in [1usize, 11, 300] {
            let a = values(n_tok * cols, 6);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                let mut out = vec![0.0; n_tok * rows];
                pool.install(|| matmul_f32(kernels(), &w, cols, &a, n_tok, rows, &mut out));
                out
            };
            let one = run(1);
            for threads in [2, 3, 8, 16] {
                let many = run(threads);
                assert!(
                    one.iter()
                        .zip(&many)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "n_tok {n_tok} threads {threads}"
                );
            }
        }
    }
}
