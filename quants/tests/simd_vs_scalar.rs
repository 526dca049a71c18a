//! Every kernel table the host can run (`simd::available()`) against the scalar references in
//! `longquant_quants::block`, on random and adversarial inputs:
//! - quantizers and dequantizers must be **bit-identical** (compared as bytes / f32 bits);
//! - dot products must agree within `1e-5 · Σ|w_i·a_i|` (the sum of the magnitudes of the
//!   terms, computed in f64 from the dequantized operands: the natural scale of f32 rounding
//!   error in a reordered sum, which stays meaningful when the result itself cancels to ~0).
//!
//! Each case has at least 2048 blocks. The data come from a fixed-seed splitmix64 generator,
//! so failures reproduce. On a host without AVX2 only the scalar table exists; the tests still
//! run it (checking the table wiring) and say so on stderr.

use half::{bf16, f16};
use longquant_quants::block::{
    self, blocks_as_bytes, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k,
    q8_0, q8_k,
};
use longquant_quants::simd::{self, Kernels};

/// Blocks per quantizer test case (for both 32- and 256-weight formats).
const BLOCKS: usize = 2048;

/// splitmix64: tiny, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Standard normal (Box-Muller).
    fn gauss(&mut self) -> f32 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    /// Student-t with 2 degrees of freedom: heavy tails, occasional values 100× the median.
    fn heavy(&mut self) -> f32 {
        let g = self.gauss() as f64;
        let chi2 = (self.gauss() as f64).powi(2) + (self.gauss() as f64).powi(2);
        (g / (chi2 / 2.0).sqrt().max(1e-3)) as f32
    }
    fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }
    /// A random finite f16 in roughly ±[2^-14, 2^4]: random sign and mantissa, bounded
    /// exponent (random *bytes* would also give NaN/inf scales, whose NaN payloads are not
    /// part of the contract).
    fn f16_scale(&mut self) -> f16 {
        let bits = self.next_u64() as u16;
        let exp = 1 + (bits >> 10) % 19;
        f16::from_bits((bits & 0x83ff) | (exp << 10))
    }
}

/// Named test inputs of `n` weights; `block` is the format's block size (outliers and the
/// per-block regimes are placed per block).
fn cases(n: usize, block: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut r = Rng(seed);
    let mut out: Vec<(&'static str, Vec<f32>)> = Vec::new();
    out.push(("gaussian", (0..n).map(|_| r.gauss()).collect()));
    out.push(("heavy-tailed", (0..n).map(|_| r.heavy()).collect()));
    out.push(("zeros", vec![0.0; n]));
    out.push(("negative zeros", vec![-0.0; n]));
    out.push(("constant", vec![0.4375; n]));
    out.push(("negative constant", vec![-3.0; n]));
    out.push(("tiny", (0..n).map(|_| r.gauss() * 1e-30).collect()));
    out.push((
        "huge",
        (0..n)
            .map(|_| {
                let m = 1e4 + 5e4 * r.unit() as f32;
                if r.next_u64() & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect(),
    ));
    let mut outliers: Vec<f32> = (0..n).map(|_| 0.02 * r.gauss()).collect();
    for b in 0..n / block {
        let i = b * block + r.below(block);
        outliers[i] = if r.next_u64() & 1 == 0 { 50.0 } else { -50.0 } * (1.0 + r.unit() as f32);
    }
    out.push(("single outlier per block", outliers));
    out.push((
        "alternating signs",
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    1.0 + 0.1 * r.gauss()
                } else {
                    -1.0 + 0.1 * r.gauss()
                }
            })
            .collect(),
    ));
    // Ties for roundf / nearest_int: each block holds ±127 (so d = 1 for Q8_0) and half-integers.
    out.push((
        "half-integer ties",
        (0..n)
            .map(|i| {
                if i % block == 0 {
                    127.0
                } else {
                    (r.below(254) as f32 - 127.0) + 0.5
                }
            })
            .collect(),
    ));
    // Small integers: many exact grid points and equal values (ties in every min/max search).
    out.push((
        "small integers",
        (0..n).map(|_| r.below(7) as f32 - 3.0).collect(),
    ));
    out.push((
        "all positive",
        (0..n).map(|_| 0.5 + r.unit() as f32).collect(),
    ));
    // Every block in a different regime, including sub-blocks that are all zero next to
    // non-zero ones (K-quant sub-blocks whose scale quantizes to 0).
    let mut mixed = Vec::with_capacity(n);
    for b in 0..n / block {
        let regime = b % 7;
        for i in 0..block {
            let sub = i / 32;
            let v = match regime {
                0 => r.gauss(),
                1 => {
                    if sub % 2 == 0 {
                        0.0
                    } else {
                        r.gauss()
                    }
                }
                2 => {
                    if sub == 3 {
                        1000.0 * r.gauss()
                    } else {
                        1e-3 * r.gauss()
                    }
                }
                3 => 1e-20 * r.gauss(),
                4 => (i % 16) as f32 * 0.25 - 2.0,
                5 => {
                    if i % 16 == 0 {
                        r.gauss()
                    } else {
                        0.0
                    }
                }
                _ => r.heavy() * 1e3,
            };
            mixed.push(v);
        }
    }
    out.push(("mixed regimes", mixed));
    // 16-weight sub-blocks (Q2_K, Q3_K) that are all zero, tiny or constant beside ordinary
    // ones, and sub-blocks holding one value of each sign.
    out.push((
        "16-weight sub-block regimes",
        (0..n)
            .map(|i| match (i / 16) % 5 {
                0 => 0.0,
                1 => r.gauss(),
                2 => 1e-17 * r.gauss(),
                3 => -0.75,
                _ => {
                    if i % 16 == 3 {
                        2.0
                    } else if i % 16 == 9 {
                        -1.0
                    } else {
                        0.0
                    }
                }
            })
            .collect(),
    ));
    // Signed zeros: which zero a min/max/absmax search keeps decides the sign bits of the
    // stored f16 scale and min (blocks of ±0 only, and ±0 beside positive or negative values).
    out.push((
        "signed zeros",
        (0..n)
            .map(|i| {
                let z = if r.next_u64() & 1 == 0 { 0.0 } else { -0.0 };
                match (i / block) % 3 {
                    0 => z,
                    1 if r.below(4) == 0 => 1.0 + r.unit() as f32,
                    2 if r.below(4) == 0 => -1.0 - r.unit() as f32,
                    _ => z,
                }
            })
            .collect(),
    ));
    out
}

/// Random importance weights: positive, spanning three orders of magnitude, some zero.
fn importance(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            if r.below(50) == 0 {
                0.0
            } else {
                (10f64.powf(3.0 * r.unit() - 1.5)) as f32
            }
        })
        .collect()
}

/// The tables under test, announcing what is (not) covered.
fn tables() -> Vec<(&'static str, &'static Kernels)> {
    let all = simd::available();
    if all.len() == 1 {
        eprintln!(
            "note: no SIMD table on this host (no AVX2+FMA+F16C); checking the scalar table only"
        );
    }
    all
}

/// First index where two byte strings of blocks differ, as (block index, byte offset).
fn first_diff(a: &[u8], b: &[u8], block_bytes: usize) -> Option<(usize, usize)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i / block_bytes, i % block_bytes))
}

fn assert_bits_eq(name: &str, case: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!(
            "{name} [{case}]: element {i} differs: {:e} ({:#x}) vs reference {:e} ({:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

/// Checks a quantizer against the reference on every case, returning the reference blocks of
/// each case for the dequantize and dot tests.
fn check_quantizer<B: block::Block>(
    table: &str,
    fmt: &str,
    got_fn: fn(&[f32], &mut [B]),
    ref_fn: fn(&[f32], &mut [B]),
    seed: u64,
) {
    let n = BLOCKS * B::BLOCK_SIZE;
    for (case, x) in cases(n, B::BLOCK_SIZE, seed) {
        let mut want = vec![zeroed::<B>(); BLOCKS];
        let mut got = vec![zeroed::<B>(); BLOCKS];
        ref_fn(&x, &mut want);
        got_fn(&x, &mut got);
        let size = std::mem::size_of::<B>();
        if let Some((b, off)) = first_diff(blocks_as_bytes(&got), blocks_as_bytes(&want), size) {
            panic!(
                "{table} quantize {fmt} [{case}]: block {b} byte {off} differs\ninput: {:?}",
                &x[b * B::BLOCK_SIZE..(b + 1) * B::BLOCK_SIZE]
            );
        }
    }
}

fn check_quantizer_imatrix<B: block::Block>(
    table: &str,
    fmt: &str,
    got_fn: fn(&[f32], &mut [B], &[f32]),
    ref_fn: fn(&[f32], &mut [B], &[f32]),
    seed: u64,
) {
    // Fewer blocks: the reference importance-weighted search is ~2× slower than the plain one.
    let blocks = BLOCKS / 2;
    let n = blocks * B::BLOCK_SIZE;
    let qw = importance(n, seed ^ 0x5555);
    for (case, x) in cases(n, B::BLOCK_SIZE, seed) {
        let mut want = vec![zeroed::<B>(); blocks];
        let mut got = vec![zeroed::<B>(); blocks];
        // One row per block: the legacy imatrix quantizers weight by the row's mean square.
        for ((xr, wr), (gr, rr)) in x
            .chunks(B::BLOCK_SIZE)
            .zip(qw.chunks(B::BLOCK_SIZE))
            .zip(got.chunks_mut(1).zip(want.chunks_mut(1)))
        {
            ref_fn(xr, rr, wr);
            got_fn(xr, gr, wr);
        }
        let size = std::mem::size_of::<B>();
        if let Some((b, off)) = first_diff(blocks_as_bytes(&got), blocks_as_bytes(&want), size) {
            panic!("{table} quantize {fmt} with importance [{case}]: block {b} byte {off} differs");
        }
    }
}

/// Dequantizes blocks produced by the reference quantizer and random-byte blocks (with finite
/// scales, via `sanitize`), comparing f32 bits.
fn check_dequantizer<B: block::Block>(
    table: &str,
    fmt: &str,
    got_fn: fn(&[B], &mut [f32]),
    ref_fn: fn(&[B], &mut [f32]),
    quantize: fn(&[f32], &mut [B]),
    sanitize: fn(&mut B, &mut Rng),
    seed: u64,
) {
    let n = BLOCKS * B::BLOCK_SIZE;
    let mut inputs: Vec<(&'static str, Vec<B>)> = Vec::new();
    for (case, x) in cases(n, B::BLOCK_SIZE, seed).into_iter().step_by(3) {
        let mut q = vec![zeroed::<B>(); BLOCKS];
        quantize(&x, &mut q);
        inputs.push((case, q));
    }
    let mut r = Rng(seed ^ 0xabcd);
    let mut random = vec![zeroed::<B>(); BLOCKS];
    for b in random.iter_mut() {
        r.bytes(bytes_mut(std::slice::from_mut(b)));
        sanitize(b, &mut r);
    }
    inputs.push(("random bytes", random));
    for (case, q) in inputs {
        let mut want = vec![0.0f32; n];
        let mut got = vec![1.0f32; n];
        ref_fn(&q, &mut want);
        got_fn(&q, &mut got);
        assert_bits_eq(&format!("{table} dequantize {fmt}"), case, &got, &want);
    }
}

/// An all-zero block.
fn zeroed<B: block::Block>() -> B {
    // SAFETY: `Block` types are plain data valid for every bit pattern, including all zeros.
    unsafe { std::mem::zeroed() }
}

/// Mutable byte view of blocks (to fill them with random bytes).
fn bytes_mut<B: block::Block>(blocks: &mut [B]) -> &mut [u8] {
    let len = std::mem::size_of_val(blocks);
    // SAFETY: `Block` types are plain data with no padding, valid for every bit pattern, so
    // their storage may be viewed and written as bytes; the borrow of `blocks` is moved in.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), len) }
}

fn finite_d_q4_0(b: &mut q4_0::BlockQ4_0, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_q4_1(b: &mut q4_1::BlockQ4_1, r: &mut Rng) {
    b.d = r.f16_scale();
    b.m = r.f16_scale();
}
fn finite_d_q5_0(b: &mut q5_0::BlockQ5_0, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_q5_1(b: &mut q5_1::BlockQ5_1, r: &mut Rng) {
    b.d = r.f16_scale();
    b.m = r.f16_scale();
}
fn finite_d_q8_0(b: &mut q8_0::BlockQ8_0, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_q8_k(b: &mut q8_k::BlockQ8K, r: &mut Rng) {
    b.d = r.gauss();
}
fn finite_d_q4_k(b: &mut q4_k::BlockQ4K, r: &mut Rng) {
    b.d = r.f16_scale();
    b.dmin = r.f16_scale();
}
fn finite_d_q5_k(b: &mut q5_k::BlockQ5K, r: &mut Rng) {
    b.d = r.f16_scale();
    b.dmin = r.f16_scale();
}
fn finite_d_iq4_nl(b: &mut iq4_nl::BlockIQ4NL, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_iq4_xs(b: &mut iq4_xs::BlockIQ4XS, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_q2_k(b: &mut q2_k::BlockQ2K, r: &mut Rng) {
    b.d = r.f16_scale();
    b.dmin = r.f16_scale();
}
fn finite_d_q3_k(b: &mut q3_k::BlockQ3K, r: &mut Rng) {
    b.d = r.f16_scale();
}
fn finite_d_q6_k(b: &mut q6_k::BlockQ6K, r: &mut Rng) {
    b.d = r.f16_scale();
}

#[test]
fn quantizers_are_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q8_0",
            k.quantize_row_q8_0,
            q8_0::quantize_row_q8_0_ref,
            1,
        );
        check_quantizer(
            t,
            "Q8_K",
            k.quantize_row_q8_k,
            q8_k::quantize_row_q8_k_ref,
            2,
        );
        check_quantizer(
            t,
            "Q4_0",
            k.quantize_row_q4_0,
            q4_0::quantize_row_q4_0_ref,
            3,
        );
        check_quantizer(
            t,
            "Q4_1",
            k.quantize_row_q4_1,
            q4_1::quantize_row_q4_1_ref,
            4,
        );
        check_quantizer(
            t,
            "Q5_0",
            k.quantize_row_q5_0,
            q5_0::quantize_row_q5_0_ref,
            5,
        );
        check_quantizer(
            t,
            "Q5_1",
            k.quantize_row_q5_1,
            q5_1::quantize_row_q5_1_ref,
            6,
        );
    }
}

#[test]
fn q4_k_quantizer_is_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q4_K",
            k.quantize_row_q4_k,
            q4_k::quantize_row_q4_k_ref,
            7,
        );
    }
}

#[test]
fn q5_k_quantizer_is_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q5_K",
            k.quantize_row_q5_k,
            q5_k::quantize_row_q5_k_ref,
            8,
        );
    }
}

#[test]
fn q6_k_quantizer_is_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q6_K",
            k.quantize_row_q6_k,
            q6_k::quantize_row_q6_k_ref,
            9,
        );
    }
}

#[test]
fn q2_k_quantizer_is_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q2_K",
            k.quantize_row_q2_k,
            q2_k::quantize_row_q2_k_ref,
            50,
        );
    }
}

#[test]
fn q3_k_quantizer_is_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "Q3_K",
            k.quantize_row_q3_k,
            q3_k::quantize_row_q3_k_ref,
            51,
        );
    }
}

#[test]
fn iq4_quantizers_are_bit_identical() {
    for (t, k) in tables() {
        check_quantizer(
            t,
            "IQ4_NL",
            k.quantize_row_iq4_nl,
            iq4_nl::quantize_row_iq4_nl,
            52,
        );
        check_quantizer(
            t,
            "IQ4_XS",
            k.quantize_row_iq4_xs,
            iq4_xs::quantize_row_iq4_xs_ref,
            53,
        );
    }
}

/// Rows of several blocks (odd counts, so the SIMD drivers' grouped and leftover paths both
/// run) against the reference, whole-row calls: the quantizers must not depend on how a row
/// is cut into groups.
#[test]
fn low_bit_quantizers_on_multi_block_rows() {
    fn rows<B: block::Block>(
        table: &str,
        fmt: &str,
        got_fn: fn(&[f32], &mut [B], &[f32]),
        ref_fn: fn(&[f32], &mut [B], &[f32]),
        plain_got: fn(&[f32], &mut [B]),
        plain_ref: fn(&[f32], &mut [B]),
        seed: u64,
    ) {
        for nb in [1usize, 2, 3, 7, 9, 13, 17] {
            let n = nb * B::BLOCK_SIZE;
            let qw = importance(n, seed ^ nb as u64);
            for (case, x) in cases(n, B::BLOCK_SIZE, seed + nb as u64) {
                let size = std::mem::size_of::<B>();
                let mut want = vec![zeroed::<B>(); nb];
                let mut got = vec![zeroed::<B>(); nb];
                ref_fn(&x, &mut want, &qw);
                got_fn(&x, &mut got, &qw);
                if let Some((b, off)) =
                    first_diff(blocks_as_bytes(&got), blocks_as_bytes(&want), size)
                {
                    panic!("{table} quantize {fmt} with importance, {nb} blocks [{case}]: block {b} byte {off} differs");
                }
                plain_ref(&x, &mut want);
                plain_got(&x, &mut got);
                if let Some((b, off)) =
                    first_diff(blocks_as_bytes(&got), blocks_as_bytes(&want), size)
                {
                    panic!("{table} quantize {fmt}, {nb} blocks [{case}]: block {b} byte {off} differs");
                }
            }
        }
    }
    for (t, k) in tables() {
        rows(
            t,
            "Q2_K",
            k.quantize_row_q2_k_imatrix,
            q2_k::quantize_row_q2_k_imatrix,
            k.quantize_row_q2_k,
            q2_k::quantize_row_q2_k_ref,
            60,
        );
        rows(
            t,
            "Q3_K",
            k.quantize_row_q3_k_imatrix,
            q3_k::quantize_row_q3_k_imatrix,
            k.quantize_row_q3_k,
            q3_k::quantize_row_q3_k_ref,
            61,
        );
        rows(
            t,
            "IQ4_NL",
            k.quantize_row_iq4_nl_imatrix,
            iq4_nl::quantize_row_iq4_nl_imatrix,
            k.quantize_row_iq4_nl,
            iq4_nl::quantize_row_iq4_nl,
            62,
        );
        rows(
            t,
            "IQ4_XS",
            k.quantize_row_iq4_xs_imatrix,
            iq4_xs::quantize_row_iq4_xs_imatrix,
            k.quantize_row_iq4_xs,
            iq4_xs::quantize_row_iq4_xs_ref,
            63,
        );
    }
}

#[test]
fn low_bit_importance_weighted_quantizers_are_bit_identical() {
    for (t, k) in tables() {
        check_quantizer_imatrix(
            t,
            "Q2_K",
            k.quantize_row_q2_k_imatrix,
            q2_k::quantize_row_q2_k_imatrix,
            54,
        );
        check_quantizer_imatrix(
            t,
            "Q3_K",
            k.quantize_row_q3_k_imatrix,
            q3_k::quantize_row_q3_k_imatrix,
            55,
        );
        check_quantizer_imatrix(
            t,
            "IQ4_NL",
            k.quantize_row_iq4_nl_imatrix,
            iq4_nl::quantize_row_iq4_nl_imatrix,
            56,
        );
        check_quantizer_imatrix(
            t,
            "IQ4_XS",
            k.quantize_row_iq4_xs_imatrix,
            iq4_xs::quantize_row_iq4_xs_imatrix,
            57,
        );
    }
}

#[test]
fn importance_weighted_quantizers_are_bit_identical() {
    for (t, k) in tables() {
        check_quantizer_imatrix(
            t,
            "Q4_K",
            k.quantize_row_q4_k_imatrix,
            q4_k::quantize_row_q4_k_imatrix,
            10,
        );
        check_quantizer_imatrix(
            t,
            "Q5_K",
            k.quantize_row_q5_k_imatrix,
            q5_k::quantize_row_q5_k_imatrix,
            11,
        );
        check_quantizer_imatrix(
            t,
            "Q6_K",
            k.quantize_row_q6_k_imatrix,
            q6_k::quantize_row_q6_k_imatrix,
            12,
        );
        check_quantizer_imatrix(
            t,
            "Q4_0",
            k.quantize_row_q4_0_imatrix,
            q4_0::quantize_row_q4_0_imatrix,
            13,
        );
        check_quantizer_imatrix(
            t,
            "Q4_1",
            k.quantize_row_q4_1_imatrix,
            q4_1::quantize_row_q4_1_imatrix,
            14,
        );
        check_quantizer_imatrix(
            t,
            "Q5_0",
            k.quantize_row_q5_0_imatrix,
            q5_0::quantize_row_q5_0_imatrix,
            15,
        );
        check_quantizer_imatrix(
            t,
            "Q5_1",
            k.quantize_row_q5_1_imatrix,
            q5_1::quantize_row_q5_1_imatrix,
            16,
        );
    }
}

#[test]
fn dequantizers_are_bit_identical() {
    for (t, k) in tables() {
        check_dequantizer(
            t,
            "Q4_0",
            k.dequantize_row_q4_0,
            q4_0::dequantize_row_q4_0,
            q4_0::quantize_row_q4_0_ref,
            finite_d_q4_0,
            20,
        );
        check_dequantizer(
            t,
            "Q4_1",
            k.dequantize_row_q4_1,
            q4_1::dequantize_row_q4_1,
            q4_1::quantize_row_q4_1_ref,
            finite_d_q4_1,
            21,
        );
        check_dequantizer(
            t,
            "Q5_0",
            k.dequantize_row_q5_0,
            q5_0::dequantize_row_q5_0,
            q5_0::quantize_row_q5_0_ref,
            finite_d_q5_0,
            22,
        );
        check_dequantizer(
            t,
            "Q5_1",
            k.dequantize_row_q5_1,
            q5_1::dequantize_row_q5_1,
            q5_1::quantize_row_q5_1_ref,
            finite_d_q5_1,
            23,
        );
        check_dequantizer(
            t,
            "Q8_0",
            k.dequantize_row_q8_0,
            q8_0::dequantize_row_q8_0,
            q8_0::quantize_row_q8_0_ref,
            finite_d_q8_0,
            24,
        );
        check_dequantizer(
            t,
            "Q8_K",
            k.dequantize_row_q8_k,
            q8_k::dequantize_row_q8_k,
            q8_k::quantize_row_q8_k_ref,
            finite_d_q8_k,
            25,
        );
        check_dequantizer(
            t,
            "Q4_K",
            k.dequantize_row_q4_k,
            q4_k::dequantize_row_q4_k,
            q4_k::quantize_row_q4_k_ref,
            finite_d_q4_k,
            26,
        );
        check_dequantizer(
            t,
            "Q5_K",
            k.dequantize_row_q5_k,
            q5_k::dequantize_row_q5_k,
            q5_k::quantize_row_q5_k_ref,
            finite_d_q5_k,
            27,
        );
        check_dequantizer(
            t,
            "Q2_K",
            k.dequantize_row_q2_k,
            q2_k::dequantize_row_q2_k,
            q2_k::quantize_row_q2_k_ref,
            finite_d_q2_k,
            70,
        );
        check_dequantizer(
            t,
            "Q3_K",
            k.dequantize_row_q3_k,
            q3_k::dequantize_row_q3_k,
            q3_k::quantize_row_q3_k_ref,
            finite_d_q3_k,
            71,
        );
        check_dequantizer(
            t,
            "IQ4_NL",
            k.dequantize_row_iq4_nl,
            iq4_nl::dequantize_row_iq4_nl,
            iq4_nl::quantize_row_iq4_nl,
            finite_d_iq4_nl,
            72,
        );
        check_dequantizer(
            t,
            "IQ4_XS",
            k.dequantize_row_iq4_xs,
            iq4_xs::dequantize_row_iq4_xs,
            iq4_xs::quantize_row_iq4_xs_ref,
            finite_d_iq4_xs,
            73,
        );
        check_dequantizer(
            t,
            "Q6_K",
            k.dequantize_row_q6_k,
            q6_k::dequantize_row_q6_k,
            q6_k::quantize_row_q6_k_ref,
            finite_d_q6_k,
            28,
        );
    }
}

/// Weights per row in the dot-product tests (16 K-quant blocks, 128 legacy blocks).
const DOT_ROW: usize = 4096;

/// Compares a weight·activation dot product row by row: weights are each input case quantized
/// by the reference plus random-byte blocks; activations a gaussian row quantized by `act_q`.
#[allow(clippy::too_many_arguments)]
fn check_dot<W: block::Block, A: block::Block>(
    table: &str,
    fmt: &str,
    got_fn: fn(&[W], &[A]) -> f32,
    ref_fn: fn(&[W], &[A]) -> f32,
    quantize_w: fn(&[f32], &mut [W]),
    dequantize_w: fn(&[W], &mut [f32]),
    sanitize: fn(&mut W, &mut Rng),
    act_q: fn(&[f32], &mut [A]),
    dequantize_a: fn(&[A], &mut [f32]),
    seed: u64,
) {
    let n = BLOCKS * W::BLOCK_SIZE;
    let mut weights: Vec<(&'static str, Vec<W>)> = Vec::new();
    for (case, x) in cases(n, W::BLOCK_SIZE, seed).into_iter().step_by(2) {
        let mut q = vec![zeroed::<W>(); BLOCKS];
        quantize_w(&x, &mut q);
        weights.push((case, q));
    }
    let mut r = Rng(seed ^ 0x1234);
    let mut random = vec![zeroed::<W>(); BLOCKS];
    for b in random.iter_mut() {
        r.bytes(bytes_mut(std::slice::from_mut(b)));
        sanitize(b, &mut r);
    }
    weights.push(("random bytes", random));

    let wpr = DOT_ROW / W::BLOCK_SIZE;
    let apr = DOT_ROW / A::BLOCK_SIZE;
    let act: Vec<f32> = (0..DOT_ROW).map(|_| r.gauss()).collect();
    let mut qa = vec![zeroed::<A>(); apr];
    act_q(&act, &mut qa);
    let mut da = vec![0.0f32; DOT_ROW];
    dequantize_a(&qa, &mut da);
    let mut dw = vec![0.0f32; DOT_ROW];
    for (case, w) in &weights {
        for (row, wr) in w.chunks_exact(wpr).enumerate() {
            let want = ref_fn(wr, &qa);
            let got = got_fn(wr, &qa);
            dequantize_w(wr, &mut dw);
            let scale: f64 = dw
                .iter()
                .zip(&da)
                .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                .sum();
            let err = (f64::from(got) - f64::from(want)).abs();
            assert!(
                err <= 1e-5 * scale,
                "{table} dot {fmt} [{case}] row {row}: {got:e} vs reference {want:e} (|err| {err:e}, Σ|terms| {scale:e})"
            );
        }
    }
}

#[test]
fn quantized_dot_products_agree() {
    for (t, k) in tables() {
        use q8_0::{dequantize_row_q8_0 as dq8_0, quantize_row_q8_0_ref as q8_0r};
        use q8_k::{dequantize_row_q8_k as dq8_k, quantize_row_q8_k_ref as q8_kr};
        check_dot(
            t,
            "Q8_0·Q8_0",
            k.vec_dot_q8_0_q8_0,
            q8_0::vec_dot_q8_0_q8_0_ref,
            q8_0r,
            dq8_0,
            finite_d_q8_0,
            q8_0r,
            dq8_0,
            30,
        );
        check_dot(
            t,
            "Q4_0·Q8_0",
            k.vec_dot_q4_0_q8_0,
            q4_0::vec_dot_q4_0_q8_0_ref,
            q4_0::quantize_row_q4_0_ref,
            q4_0::dequantize_row_q4_0,
            finite_d_q4_0,
            q8_0r,
            dq8_0,
            31,
        );
        check_dot(
            t,
            "Q4_1·Q8_0",
            k.vec_dot_q4_1_q8_0,
            q4_1::vec_dot_q4_1_q8_0_ref,
            q4_1::quantize_row_q4_1_ref,
            q4_1::dequantize_row_q4_1,
            finite_d_q4_1,
            q8_0r,
            dq8_0,
            32,
        );
        check_dot(
            t,
            "Q5_0·Q8_0",
            k.vec_dot_q5_0_q8_0,
            q5_0::vec_dot_q5_0_q8_0_ref,
            q5_0::quantize_row_q5_0_ref,
            q5_0::dequantize_row_q5_0,
            finite_d_q5_0,
            q8_0r,
            dq8_0,
            33,
        );
        check_dot(
            t,
            "Q5_1·Q8_0",
            k.vec_dot_q5_1_q8_0,
            q5_1::vec_dot_q5_1_q8_0_ref,
            q5_1::quantize_row_q5_1_ref,
            q5_1::dequantize_row_q5_1,
            finite_d_q5_1,
            q8_0r,
            dq8_0,
            34,
        );
        check_dot(
            t,
            "Q2_K·Q8_K",
            k.vec_dot_q2_k_q8_k,
            q2_k::vec_dot_q2_k_q8_k_ref,
            q2_k::quantize_row_q2_k_ref,
            q2_k::dequantize_row_q2_k,
            finite_d_q2_k,
            q8_kr,
            dq8_k,
            74,
        );
        check_dot(
            t,
            "Q3_K·Q8_K",
            k.vec_dot_q3_k_q8_k,
            q3_k::vec_dot_q3_k_q8_k_ref,
            q3_k::quantize_row_q3_k_ref,
            q3_k::dequantize_row_q3_k,
            finite_d_q3_k,
            q8_kr,
            dq8_k,
            75,
        );
        check_dot(
            t,
            "Q4_K·Q8_K",
            k.vec_dot_q4_k_q8_k,
            q4_k::vec_dot_q4_k_q8_k_ref,
            q4_k::quantize_row_q4_k_ref,
            q4_k::dequantize_row_q4_k,
            finite_d_q4_k,
            q8_kr,
            dq8_k,
            35,
        );
        check_dot(
            t,
            "Q5_K·Q8_K",
            k.vec_dot_q5_k_q8_k,
            q5_k::vec_dot_q5_k_q8_k_ref,
            q5_k::quantize_row_q5_k_ref,
            q5_k::dequantize_row_q5_k,
            finite_d_q5_k,
            q8_kr,
            dq8_k,
            36,
        );
        check_dot(
            t,
            "Q6_K·Q8_K",
            k.vec_dot_q6_k_q8_k,
            q6_k::vec_dot_q6_k_q8_k_ref,
            q6_k::quantize_row_q6_k_ref,
            q6_k::dequantize_row_q6_k,
            finite_d_q6_k,
            q8_kr,
            dq8_k,
            37,
        );
        check_dot(
            t,
            "IQ4_NL·Q8_0",
            k.vec_dot_iq4_nl_q8_0,
            iq4_nl::vec_dot_iq4_nl_q8_0_ref,
            iq4_nl::quantize_row_iq4_nl,
            iq4_nl::dequantize_row_iq4_nl,
            finite_d_iq4_nl,
            q8_0r,
            dq8_0,
            38,
        );
        check_dot(
            t,
            "IQ4_XS·Q8_K",
            k.vec_dot_iq4_xs_q8_k,
            iq4_xs::vec_dot_iq4_xs_q8_k_ref,
            iq4_xs::quantize_row_iq4_xs_ref,
            iq4_xs::dequantize_row_iq4_xs,
            finite_d_iq4_xs,
            q8_kr,
            dq8_k,
            39,
        );
    }
}

/// Row lengths for the float kernels: empty, shorter than a vector, ragged tails, long.
const FLOAT_LENS: [usize; 9] = [0, 1, 7, 31, 33, 100, 4096, 4099, 65_537];

/// Random f32 bit patterns (NaN, ±inf, subnormals, both zeros) mixed with ordinary values and
/// exact rounding ties for f16/bf16.
fn float_inputs(n: usize, r: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 4 {
            0 => f32::from_bits(r.next_u64() as u32),
            1 => r.gauss() * 1000.0,
            // Halfway between two bf16 values / two f16 values.
            2 => f32::from_bits((r.next_u64() as u32 & 0xffff_0000) | 0x8000),
            _ => f32::from_bits((r.next_u64() as u32 & 0xffff_e000) | 0x1000),
        })
        .collect()
}

#[test]
fn float_conversions_are_bit_identical() {
    let mut r = Rng(40);
    for (t, k) in tables() {
        for &n in &FLOAT_LENS {
            let x = float_inputs(n, &mut r);
            let (mut h_got, mut h_want) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
            (k.f32_to_f16_row)(&x, &mut h_got);
            block::float::f32_to_f16_row(&x, &mut h_want);
            if let Some(i) = h_got
                .iter()
                .zip(&h_want)
                .position(|(a, b)| a.to_bits() != b.to_bits())
            {
                panic!(
                    "{t} f32→f16 n={n} elem {i}: {:#x} → {:#x} vs {:#x}",
                    x[i].to_bits(),
                    h_got[i].to_bits(),
                    h_want[i].to_bits()
                );
            }
            let (mut b_got, mut b_want) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
            (k.f32_to_bf16_row)(&x, &mut b_got);
            block::float::f32_to_bf16_row(&x, &mut b_want);
            if let Some(i) = b_got
                .iter()
                .zip(&b_want)
                .position(|(a, b)| a.to_bits() != b.to_bits())
            {
                panic!(
                    "{t} f32→bf16 n={n} elem {i}: {:#x} → {:#x} vs {:#x}",
                    x[i].to_bits(),
                    b_got[i].to_bits(),
                    b_want[i].to_bits()
                );
            }
        }
        // Every 16-bit pattern, widened (plus a 5-element tail).
        let all: Vec<u16> = (0..=u16::MAX).chain(0..5).collect();
        let h: Vec<f16> = all.iter().map(|&b| f16::from_bits(b)).collect();
        let b: Vec<bf16> = all.iter().map(|&b| bf16::from_bits(b)).collect();
        let (mut got, mut want) = (vec![0.0f32; all.len()], vec![0.0f32; all.len()]);
        (k.f16_to_f32_row)(&h, &mut got);
        block::float::f16_to_f32_row(&h, &mut want);
        assert_bits_eq(&format!("{t} f16→f32"), "all patterns", &got, &want);
        (k.bf16_to_f32_row)(&b, &mut got);
        block::float::bf16_to_f32_row(&b, &mut want);
        assert_bits_eq(&format!("{t} bf16→f32"), "all patterns", &got, &want);
    }
}

#[test]
fn float_dot_products_agree() {
    let mut r = Rng(41);
    for (t, k) in tables() {
        for &n in &FLOAT_LENS {
            for scale in [1.0f32, 1e-20, 3e4] {
                let w: Vec<f32> = (0..n).map(|_| r.heavy() * scale).collect();
                let a: Vec<f32> = (0..n).map(|_| r.gauss()).collect();
                // Clamped into f16's finite range (an overflow to ±inf would make the sum meaningless).
                let wh: Vec<f16> = w
                    .iter()
                    .map(|&v| block::float::f32_to_f16(v.clamp(-6e4, 6e4)))
                    .collect();
                let wb: Vec<bf16> = w.iter().map(|&v| block::float::f32_to_bf16(v)).collect();
                let check = |what: &str, got: f32, want: f32, widened: &dyn Fn(usize) -> f64| {
                    let mag: f64 = (0..n).map(|i| (widened(i) * f64::from(a[i])).abs()).sum();
                    let err = (f64::from(got) - f64::from(want)).abs();
                    assert!(
                        err <= 1e-5 * mag,
                        "{t} {what} n={n} scale={scale}: {got:e} vs {want:e} (Σ|terms| {mag:e})"
                    );
                };
                check(
                    "f32·f32",
                    (k.vec_dot_f32)(&w, &a),
                    block::float::vec_dot_f32(&w, &a),
                    &|i| f64::from(w[i]),
                );
                check(
                    "f16·f32",
                    (k.vec_dot_f16_f32)(&wh, &a),
                    block::float::vec_dot_f16_f32(&wh, &a),
                    &|i| f64::from(wh[i].to_f32()),
                );
                check(
                    "bf16·f32",
                    (k.vec_dot_bf16_f32)(&wb, &a),
                    block::float::vec_dot_bf16_f32(&wb, &a),
                    &|i| f64::from(block::float::bf16_to_f32(wb[i])),
                );
            }
        }
    }
}

#[test]
fn the_simd_table_is_selected_when_available() {
    let all = tables();
    // The best table comes first and is what `kernels()` picks unless scalar is forced.
    if std::env::var_os(simd::FORCE_SCALAR_ENV).is_none() {
        assert!(
            std::ptr::eq(simd::kernels(), all[0].1),
            "kernels() is not the best available table"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        let has = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        assert_eq!(
            all.iter().any(|(n, _)| *n == "avx2"),
            has,
            "AVX2 table presence must match CPU features"
        );
    }
}
