//! Q4_K, Q5_K and Q6_K × Q8_K for batches, AVX-512 VNNI, with the weights repacked per task so
//! that one vector lane is one output row: no horizontal sums.
//!
//! The tile kernels of `x512` walk one weight row against four tokens: their `vpdpwssd` lanes
//! hold parts of one row's sum, so every (row, token, super-block) ends in a horizontal
//! reduction (and for Q4_K a transpose), which cost more than the products. Here a task's rows
//! are unpacked once, 16 rows at a time, into *lane-major* steps: step `s` of super-block `b` is
//! 64 bytes, row `i`'s levels of weights `4s..4s+4` in bytes `4i..4i+4`. One `vpdpbusd` of a
//! step against a token's four activation bytes (broadcast) advances all 16 rows' sums by four
//! products each; a sub-block's sums are multiplied by the rows' scales (16 lanes, one per row),
//! so lane `i` ends with row `i`'s exact integer Σ scale·level·y, which is converted and fused
//! into the row's running sum.
//!
//! The integers are those of the tile kernels (exact sums: the grouping does not matter), and
//! the float steps per (row, token) are the same ones in the same order — Q4_K per 64-weight
//! quarter `code += f32(Σ)·(d·d_y)`, `min += f32(Σ min·bsum)·(dmin·d_y)`, result `code − min`
//! (`x512::q4k_tokens`); Q5_K per super-block `acc += ((−dmin)·f32(Σ min·bsum) + f32(Σ)·d)·d_y`
//! (`block_k4`); Q6_K per super-block `acc += (f32(Σ)·d)·d_y` — so every output is
//! bit-identical to the tile kernel's, whichever kernel a task's rows and tokens fall to (rows
//! beyond a multiple of 16 take the tile kernel, and the last `nt % 4` tokens the one-token
//! form of this one).
use super::x512;
use longquant_quants::block::{
    kquant_common::get_scale_min_k4, q4_k::BlockQ4K, q5_k::BlockQ5K, q6_k::BlockQ6K, q8_k::BlockQ8K,
};
use std::arch::x86_64::*;

/// Rows per packed group: one per i32 lane of a 512-bit vector.
const R: usize = 16;
/// Tokens per kernel call.
const NT: usize = 4;
/// 4-weight steps per super-block.
const STEPS: usize = 64;
/// Tokens of a task from which the packed kernel pays for its packing.
pub(super) const PACK_FROM: usize = 8;

/// Environment variable that turns the packed kernels off (`off`), leaving every task to the
/// tile kernels: the same bits, for timing one against the other in one binary.
const ENV: &str = "LONGQUANT_KQUANT_PACK";

/// Whether batches take the packed kernels (unless [`ENV`] is `off`). Read once.
pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).map_or(true, |v| v.trim() != "off"))
}

/// One 16-row group of weights in the kernel's layout, per super-block `b`: `levels[b·64 + s]`
/// (step `s`, 16 rows × 4 levels, unsigned), `scales[b·SUB + j]` (sub-block `j`'s scale of each
/// row, i32; SUB = 8 for Q4_K/Q5_K, 16 for Q6_K), `mins[b·4 + m]` (Q4_K/Q5_K, quarter `m`: each
/// row's `(min_2m, min_2m+1)` as two i16), `d[b]` and `dmin[b]` (each row's super-block scales
/// as f32).
#[derive(Default)]
pub(super) struct Packed {
    levels: Vec<[u32; 16]>,
    scales: Vec<[i32; 16]>,
    mins: Vec<[i16; 32]>,
    d: Vec<[f32; 16]>,
    dmin: Vec<[f32; 16]>,
}

impl Packed {
    fn reset(&mut self, bpr: usize, sub: usize, with_mins: bool) {
        self.levels.clear();
        self.levels.resize(bpr * STEPS, [0; 16]);
        self.scales.clear();
        self.scales.resize(bpr * sub, [0; 16]);
        self.mins.clear();
        self.mins
            .resize(if with_mins { bpr * 4 } else { 0 }, [0; 32]);
        self.d.clear();
        self.d.resize(bpr, [0.0; 16]);
        self.dmin.clear();
        self.dmin.resize(if with_mins { bpr } else { 0 }, [0.0; 16]);
    }

    /// Row `i`'s levels of super-block `b` (activation order) into the steps.
    fn put_levels(&mut self, i: usize, b: usize, lv: &[u8; 256]) {
        let steps = &mut self.levels[b * STEPS..(b + 1) * STEPS];
        for (step, four) in steps.iter_mut().zip(lv.chunks_exact(4)) {
            step[i] = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
        }
    }

    /// Row `i`'s Q4_K/Q5_K scales, mins and super-block scales of block `b`.
    fn put_k4(&mut self, i: usize, b: usize, scales: &[u8; 12], d: f32, dmin: f32) {
        for j in 0..8 {
            let (sc, mn) = get_scale_min_k4(j, scales);
            self.scales[b * 8 + j][i] = i32::from(sc);
            self.mins[b * 4 + j / 2][2 * i + j % 2] = i16::from(mn);
        }
        self.d[b][i] = d;
        self.dmin[b][i] = dmin;
    }
}

/// A K-quant format the packed kernels run.
pub(super) trait Fmt: Sized + Sync {
    /// Packs rows `w[i·bpr..(i+1)·bpr]`, i < 16.
    fn pack(p: &mut Packed, w: &[Self], bpr: usize);
    /// 16 packed rows × `N` tokens (see [`tile_k4`]).
    ///
    /// # Safety
    /// As [`tile_k4`].
    unsafe fn tile<const N: usize>(
        p: &Packed,
        bpr: usize,
        a: &[BlockQ8K],
        pairs: &[[i16; 8]],
        o: &mut [f32],
        stride: usize,
    );
    /// The tile kernel's one row against one token (for the rows beyond the 16-row groups).
    ///
    /// # Safety
    /// `x512::available()`; `a.len() == w.len()`.
    unsafe fn one(w: &[Self], a: &[BlockQ8K]) -> f32;
}

/// Q4_K levels of one super-block in activation order: byte 32c + l holds weight 64c + l (low
/// nibble) and 64c + 32 + l (high nibble).
fn levels_q4k(wb: &BlockQ4K) -> [u8; 256] {
    let mut lv = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            let q = wb.qs[32 * c + l];
            lv[64 * c + l] = q & 0x0f;
            lv[64 * c + 32 + l] = q >> 4;
        }
    }
    lv
}

/// Q5_K levels (0..31): the Q4_K nibbles plus bit `2c` (low nibble) or `2c + 1` (high) of
/// `qh[l]` as the fifth bit.
fn levels_q5k(wb: &BlockQ5K) -> [u8; 256] {
    let mut lv = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            let (q, h) = (wb.qs[32 * c + l], wb.qh[l]);
            lv[64 * c + l] = (q & 0x0f) | (((h >> (2 * c)) & 1) << 4);
            lv[64 * c + 32 + l] = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
        }
    }
    lv
}

/// Q6_K levels before the offset (0..63): weight 128h + 32k + l has its low four bits in
/// `ql[64h + 32(k % 2) + l]` (low nibble for k < 2) and its top two in bits 2k..2k+2 of
/// `qh[32h + l]`.
fn levels_q6k(wb: &BlockQ6K) -> [u8; 256] {
    let mut lv = [0u8; 256];
    for h in 0..2 {
        for l in 0..32 {
            let (q0, q1, qh) = (wb.ql[64 * h + l], wb.ql[64 * h + 32 + l], wb.qh[32 * h + l]);
            lv[128 * h + l] = (q0 & 0x0f) | ((qh & 3) << 4);
            lv[128 * h + 32 + l] = (q1 & 0x0f) | (((qh >> 2) & 3) << 4);
            lv[128 * h + 64 + l] = (q0 >> 4) | (((qh >> 4) & 3) << 4);
            lv[128 * h + 96 + l] = (q1 >> 4) | (((qh >> 6) & 3) << 4);
        }
    }
    lv
}

impl Fmt for BlockQ4K {
    fn pack(p: &mut Packed, w: &[Self], bpr: usize) {
        debug_assert_eq!(w.len(), R * bpr);
        p.reset(bpr, 8, true);
        for i in 0..R {
            for b in 0..bpr {
                let wb = &w[i * bpr + b];
                p.put_levels(i, b, &levels_q4k(wb));
                p.put_k4(i, b, &wb.scales, wb.d.to_f32(), wb.dmin.to_f32());
            }
        }
    }

    unsafe fn tile<const N: usize>(
        p: &Packed,
        bpr: usize,
        a: &[BlockQ8K],
        pairs: &[[i16; 8]],
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's contract is this function's.
        unsafe { tile_k4::<N, true>(p, bpr, a, pairs, o, stride) }
    }

    unsafe fn one(w: &[Self], a: &[BlockQ8K]) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { x512::q4k::<1>(w, a)[0] }
    }
}

impl Fmt for BlockQ5K {
    fn pack(p: &mut Packed, w: &[Self], bpr: usize) {
        debug_assert_eq!(w.len(), R * bpr);
        p.reset(bpr, 8, true);
        for i in 0..R {
            for b in 0..bpr {
                let wb = &w[i * bpr + b];
                p.put_levels(i, b, &levels_q5k(wb));
                p.put_k4(i, b, &wb.scales, wb.d.to_f32(), wb.dmin.to_f32());
            }
        }
    }

    unsafe fn tile<const N: usize>(
        p: &Packed,
        bpr: usize,
        a: &[BlockQ8K],
        pairs: &[[i16; 8]],
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's contract is this function's.
        unsafe { tile_k4::<N, false>(p, bpr, a, pairs, o, stride) }
    }

    unsafe fn one(w: &[Self], a: &[BlockQ8K]) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { x512::q5k::<1>(w, a)[0] }
    }
}

impl Fmt for BlockQ6K {
    fn pack(p: &mut Packed, w: &[Self], bpr: usize) {
        debug_assert_eq!(w.len(), R * bpr);
        p.reset(bpr, 16, false);
        for i in 0..R {
            for b in 0..bpr {
                let wb = &w[i * bpr + b];
                p.put_levels(i, b, &levels_q6k(wb));
                for j in 0..16 {
                    p.scales[b * 16 + j][i] = i32::from(wb.scales[j]);
                }
                p.d[b][i] = wb.d.to_f32();
            }
        }
    }

    unsafe fn tile<const N: usize>(
        p: &Packed,
        bpr: usize,
        a: &[BlockQ8K],
        _pairs: &[[i16; 8]],
        o: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's contract is this function's.
        unsafe { tile_q6k::<N>(p, bpr, a, o, stride) }
    }

    unsafe fn one(w: &[Self], a: &[BlockQ8K]) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { x512::q6k::<1>(w, a)[0] }
    }
}

/// Per token and super-block: `(bsums[2j] + bsums[2j+1])` for j = 0..8 as i16 (exact: at most
/// 2·16·128 in magnitude), so quarter `m`'s pair is the i32 at `2m`.
fn q8_pairs(ab: &BlockQ8K) -> [i16; 8] {
    std::array::from_fn(|j| ab.bsums[2 * j].wrapping_add(ab.bsums[2 * j + 1]))
}

/// Lane `i`: Σ over the 4-weight steps `s0..s0 + n` of row `i`'s levels × the token's values.
///
/// # Safety
/// AVX-512 F/VNNI; `s0 + n ≤ 64`; `p` holds block `b`.
#[inline(always)]
unsafe fn steps<const N: usize>(
    p: &Packed,
    b: usize,
    s0: usize,
    n: usize,
    ab: &[&BlockQ8K; N],
) -> [__m512i; N] {
    // SAFETY: loads of whole array elements and of 4 bytes at 4·step < 256 inside `qs`.
    unsafe {
        let mut s = [_mm512_setzero_si512(); N];
        for step in s0..s0 + n {
            let w = _mm512_loadu_si512(p.levels[b * STEPS + step].as_ptr().cast());
            for t in 0..N {
                let y4 = (ab[t].qs.as_ptr().add(4 * step) as *const i32).read_unaligned();
                s[t] = _mm512_dpbusd_epi32(s[t], w, _mm512_set1_epi32(y4));
            }
        }
        s
    }
}

/// Q4_K (`Q4 = true`) or Q5_K: 16 packed rows × `N` tokens of `a` (`a[t·bpr..]`) into
/// `o[t·stride + i]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI must be available; `p` holds `bpr` blocks; `a.len() ≥ N·bpr`;
/// `pairs.len() ≥ N·bpr`; `o.len() ≥ (N − 1)·stride + 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_k4<const N: usize, const Q4: bool>(
    p: &Packed,
    bpr: usize,
    a: &[BlockQ8K],
    pairs: &[[i16; 8]],
    o: &mut [f32],
    stride: usize,
) {
    assert!(a.len() >= N * bpr && pairs.len() >= N * bpr && p.d.len() == bpr);
    assert!((N - 1) * stride + R <= o.len());
    // SAFETY: every load below reads a whole array element of `p` or `pairs` at an index
    // asserted above; features enabled on this function.
    unsafe {
        let mut accf = [_mm512_setzero_ps(); N];
        let mut accm = [_mm512_setzero_ps(); N];
        for b in 0..bpr {
            let wd = _mm512_loadu_ps(p.d[b].as_ptr());
            let wdm = _mm512_loadu_ps(p.dmin[b].as_ptr());
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * bpr + b]);
            let mut code = [_mm512_setzero_si512(); N];
            let mut mins = [_mm512_setzero_si512(); N];
            for m in 0..4 {
                for j in 2 * m..2 * m + 2 {
                    let s = steps::<N>(p, b, 8 * j, 8, &ab);
                    let sc = _mm512_loadu_si512(p.scales[b * 8 + j].as_ptr().cast());
                    for t in 0..N {
                        code[t] = _mm512_add_epi32(code[t], _mm512_mullo_epi32(s[t], sc));
                    }
                }
                let mn = _mm512_loadu_si512(p.mins[b * 4 + m].as_ptr().cast());
                for t in 0..N {
                    let pr =
                        (pairs[t * bpr + b].as_ptr().add(2 * m) as *const i32).read_unaligned();
                    let mi = _mm512_madd_epi16(mn, _mm512_set1_epi32(pr));
                    if Q4 {
                        // The repacked GEMM's steps: both sums fused per quarter.
                        let dy = _mm512_set1_ps(ab[t].d);
                        let dd = _mm512_mul_ps(wd, dy);
                        let dm = _mm512_mul_ps(wdm, dy);
                        accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(code[t]), dd, accf[t]);
                        accm[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mi), dm, accm[t]);
                        code[t] = _mm512_setzero_si512();
                    } else {
                        mins[t] = _mm512_add_epi32(mins[t], mi);
                    }
                }
            }
            if !Q4 {
                for t in 0..N {
                    // The tiled kernel's block step: (−dmin)·smin + sdot·d fused, then · d_y.
                    let v = _mm512_fmadd_ps(
                        _mm512_castsi512_ps(_mm512_xor_si512(
                            _mm512_castps_si512(wdm),
                            _mm512_set1_epi32(i32::MIN),
                        )),
                        _mm512_cvtepi32_ps(mins[t]),
                        _mm512_mul_ps(_mm512_cvtepi32_ps(code[t]), wd),
                    );
                    accf[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(ab[t].d), accf[t]);
                }
            }
        }
        for t in 0..N {
            let r = if Q4 {
                _mm512_sub_ps(accf[t], accm[t])
            } else {
                accf[t]
            };
            _mm512_storeu_ps(o.as_mut_ptr().add(t * stride), r);
        }
    }
}

/// Q6_K: 16 packed rows × `N` tokens of `a` into `o[t·stride + i]`.
///
/// # Safety
/// As [`tile_k4`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q6k<const N: usize>(
    p: &Packed,
    bpr: usize,
    a: &[BlockQ8K],
    o: &mut [f32],
    stride: usize,
) {
    assert!(a.len() >= N * bpr && p.d.len() == bpr);
    assert!((N - 1) * stride + R <= o.len());
    // SAFETY: as in `tile_k4`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..bpr {
            let wd = _mm512_loadu_ps(p.d[b].as_ptr());
            let ab: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t * bpr + b]);
            let mut code = [_mm512_setzero_si512(); N];
            for j in 0..16 {
                let s = steps::<N>(p, b, 4 * j, 4, &ab);
                let sc = _mm512_loadu_si512(p.scales[b * 16 + j].as_ptr().cast());
                for t in 0..N {
                    // Levels carry +32: Σ (l − 32)·y = Σ l·y − 32·bsum (exact).
                    let off = _mm512_set1_epi32(32 * i32::from(ab[t].bsums[j]));
                    let raw = _mm512_sub_epi32(s[t], off);
                    code[t] = _mm512_add_epi32(code[t], _mm512_mullo_epi32(raw, sc));
                }
            }
            for t in 0..N {
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(code[t]), wd);
                acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(ab[t].d), acc[t]);
            }
        }
        for (t, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(t * stride), *v);
        }
    }
}

thread_local! {
    static PACKED: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// One scheduler task: rows `r0..r1` × tokens `t0..t0 + nt` into `o[t·stride + r − r0]`.
/// Full 16-row groups take the packed kernel (4 tokens at a time, the last `nt % 4` one at a
/// time), leftover rows the tile kernel.
///
/// # Safety
/// `x512::available()` must hold.
pub(super) unsafe fn task<W: Fmt>(
    w: &[W],
    bpr: usize,
    a: &[BlockQ8K],
    (t0, nt, stride): (usize, usize, usize),
    (r0, r1): (usize, usize),
    o: &mut [f32],
) {
    assert!(r1 * bpr <= w.len() && (t0 + nt) * bpr <= a.len());
    assert!(nt == 0 || r1 == r0 || (nt - 1) * stride + (r1 - r0) <= o.len());
    let at = &a[t0 * bpr..(t0 + nt) * bpr];
    let pairs: Vec<[i16; 8]> = at.iter().map(q8_pairs).collect();
    let full = r0 + (r1 - r0) / R * R;
    PACKED.with_borrow_mut(|p| {
        for g in (r0..full).step_by(R) {
            W::pack(p, &w[g * bpr..(g + R) * bpr], bpr);
            let mut t = 0;
            while t < nt {
                let ot = &mut o[t * stride + g - r0..];
                let (ta, tp) = (&at[t * bpr..], &pairs[t * bpr..]);
                // SAFETY: features (caller); bounds: 16 rows of the group and the tokens from
                // t lie inside the task's rectangle of `o` (asserted above).
                unsafe {
                    if t + NT <= nt {
                        W::tile::<NT>(p, bpr, ta, tp, ot, stride);
                        t += NT;
                    } else {
                        W::tile::<1>(p, bpr, ta, tp, ot, stride);
                        t += 1;
                    }
                }
            }
        }
    });
    for r in full..r1 {
        for t in 0..nt {
            let ta = &at[t * bpr..(t + 1) * bpr];
            // SAFETY: features (caller); one row, one token.
            o[t * stride + r - r0] = unsafe { W::one(&w[r * bpr..(r + 1) * bpr], ta) };
        }
    }
}
