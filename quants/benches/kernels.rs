//! Kernel throughput: every table the host supports (`simd::available()`: "avx2" and "scalar"
//! on a modern x86-64), on the same inputs.
//!
//! - `quantize/<fmt>/<table>`: one thread, 256K weights (1 MiB of f32), million weights/s.
//! - `quantize_tensor/<fmt>`: `tensor::quantize_tensor` on the rayon pool (all threads, the
//!   process-wide table), 4M weights in rows of 4096.
//! - `dot/<fmt>/<table>/<n>`: one weight row of `n` weights · activations, for n in 4K, 64K,
//!   1M, 16M (L1, L2, L3, RAM); throughput in bytes of *weights* read.
//!   `dot/<fmt>/dequant+f32/<n>` is the baseline: dequantize the row with the same table into
//!   an f32 buffer, then an f32·f32 dot.
//!
//! Kept short (`sample_size(10)`, ~1 s per benchmark) because the build machine has 2 cores.
//! Run: `cargo bench -p longquant-quants --bench kernels` (add a filter such as `quantize/`).

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use longquant_quants::block::{
    self, iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, q8_0, q8_k, Block,
};
use longquant_quants::simd;
use longquant_quants::{tensor, BlockFormat};

/// Deterministic gaussian-ish data (sum of uniforms), no `rand` dependency.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 1.7)
        .collect()
}

fn zeroed<B: Block>(n: usize) -> Vec<B> {
    // SAFETY: `Block` types are plain data valid for every bit pattern, including all zeros.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

fn configure() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
}

fn bench_quantize(c: &mut Criterion) {
    const N: usize = 256 * 1024;
    let x = data(N, 1);
    let mut g = c.benchmark_group("quantize");
    g.throughput(Throughput::Elements(N as u64));
    for (name, k) in simd::available() {
        macro_rules! q {
            ($fmt:literal, $f:ident, $b:ty) => {{
                let mut y = zeroed::<$b>(N / <$b as Block>::BLOCK_SIZE);
                g.bench_function(BenchmarkId::new($fmt, name), |b| {
                    b.iter(|| (k.$f)(black_box(&x), &mut y))
                });
            }};
        }
        q!("Q8_0", quantize_row_q8_0, q8_0::BlockQ8_0);
        q!("Q8_K", quantize_row_q8_k, q8_k::BlockQ8K);
        q!("Q4_K", quantize_row_q4_k, q4_k::BlockQ4K);
        q!("Q5_K", quantize_row_q5_k, q5_k::BlockQ5K);
        q!("Q6_K", quantize_row_q6_k, q6_k::BlockQ6K);
        q!("Q2_K", quantize_row_q2_k, q2_k::BlockQ2K);
        q!("Q3_K", quantize_row_q3_k, q3_k::BlockQ3K);
        q!("IQ4_NL", quantize_row_iq4_nl, iq4_nl::BlockIQ4NL);
        q!("IQ4_XS", quantize_row_iq4_xs, iq4_xs::BlockIQ4XS);
        let qw: Vec<f32> = data(N, 9).iter().map(|v| v * v + 0.1).collect();
        macro_rules! qi {
            ($fmt:literal, $f:ident, $b:ty) => {{
                let mut y = zeroed::<$b>(N / <$b as Block>::BLOCK_SIZE);
                g.bench_function(BenchmarkId::new(concat!($fmt, "+imatrix"), name), |b| {
                    b.iter(|| (k.$f)(black_box(&x), &mut y, &qw))
                });
            }};
        }
        qi!("Q4_K", quantize_row_q4_k_imatrix, q4_k::BlockQ4K);
        qi!("Q2_K", quantize_row_q2_k_imatrix, q2_k::BlockQ2K);
        qi!("Q3_K", quantize_row_q3_k_imatrix, q3_k::BlockQ3K);
        qi!("IQ4_NL", quantize_row_iq4_nl_imatrix, iq4_nl::BlockIQ4NL);
        qi!("IQ4_XS", quantize_row_iq4_xs_imatrix, iq4_xs::BlockIQ4XS);
    }
    g.finish();
}

fn bench_quantize_tensor(c: &mut Criterion) {
    const N: usize = 4 * 1024 * 1024;
    const ROW: usize = 4096;
    let x = data(N, 2);
    let mut g = c.benchmark_group("quantize_tensor");
    g.throughput(Throughput::Elements(N as u64));
    for fmt in [
        BlockFormat::Q8_0,
        BlockFormat::Q4_K,
        BlockFormat::Q5_K,
        BlockFormat::Q6_K,
        BlockFormat::Q2_K,
        BlockFormat::Q3_K,
        BlockFormat::IQ4_NL,
        BlockFormat::IQ4_XS,
    ] {
        let Some(bytes) = fmt.row_size(N) else {
            continue;
        };
        // u64 storage keeps the output aligned for every block type.
        let mut dst = vec![0u64; bytes.div_ceil(8)];
        let dst = &mut bytemuck_bytes(&mut dst)[..bytes];
        let label = format!("{}/{}", simd::kernels().name, rayon::current_num_threads());
        g.bench_function(BenchmarkId::new(fmt.name(), label), |b| {
            b.iter(|| tensor::quantize_tensor(fmt, black_box(&x), ROW, None, dst).ok())
        });
    }
    g.finish();
}

/// Byte view of a u64 buffer (alignment 8 satisfies every block type).
fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
    let len = std::mem::size_of_val(v);
    // SAFETY: u64 has no padding and any byte pattern is a valid u64; the borrow moves in.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}

const DOT_SIZES: [usize; 4] = [4 * 1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024];

fn bench_dot(c: &mut Criterion) {
    let tables = simd::available();
    let best = simd::kernels();
    for &n in &DOT_SIZES {
        let w = data(n, 3);
        let a = data(n, 4);
        let mut buf = vec![0.0f32; n];

        // Activations in both quantized forms (made once with the best table).
        let mut a8k = zeroed::<q8_k::BlockQ8K>(n / 256);
        (best.quantize_row_q8_k)(&a, &mut a8k);
        let mut a80 = zeroed::<q8_0::BlockQ8_0>(n / 32);
        (best.quantize_row_q8_0)(&a, &mut a80);

        macro_rules! qdot {
            ($fmt:literal, $b:ty, $quant:ident, $dequant:ident, $dot:ident, $act:expr) => {{
                let mut wq = zeroed::<$b>(n / <$b as Block>::BLOCK_SIZE);
                (best.$quant)(&w, &mut wq);
                let act = $act;
                let mut g = c.benchmark_group(format!("dot/{}", $fmt));
                g.throughput(Throughput::Bytes(std::mem::size_of_val(&wq[..]) as u64));
                for &(name, k) in &tables {
                    g.bench_function(BenchmarkId::new(name, n), |b| {
                        b.iter(|| (k.$dot)(black_box(&wq), act))
                    });
                }
                g.bench_function(BenchmarkId::new("dequant+f32", n), |b| {
                    b.iter(|| {
                        (best.$dequant)(black_box(&wq), &mut buf);
                        (best.vec_dot_f32)(&buf, &a)
                    })
                });
                g.finish();
            }};
        }
        qdot!(
            "Q8_0",
            q8_0::BlockQ8_0,
            quantize_row_q8_0,
            dequantize_row_q8_0,
            vec_dot_q8_0_q8_0,
            &a80[..]
        );
        qdot!(
            "Q2_K",
            q2_k::BlockQ2K,
            quantize_row_q2_k,
            dequantize_row_q2_k,
            vec_dot_q2_k_q8_k,
            &a8k[..]
        );
        qdot!(
            "Q3_K",
            q3_k::BlockQ3K,
            quantize_row_q3_k,
            dequantize_row_q3_k,
            vec_dot_q3_k_q8_k,
            &a8k[..]
        );
        qdot!(
            "Q4_K",
            q4_k::BlockQ4K,
            quantize_row_q4_k,
            dequantize_row_q4_k,
            vec_dot_q4_k_q8_k,
            &a8k[..]
        );
        qdot!(
            "Q5_K",
            q5_k::BlockQ5K,
            quantize_row_q5_k,
            dequantize_row_q5_k,
            vec_dot_q5_k_q8_k,
            &a8k[..]
        );
        qdot!(
            "Q6_K",
            q6_k::BlockQ6K,
            quantize_row_q6_k,
            dequantize_row_q6_k,
            vec_dot_q6_k_q8_k,
            &a8k[..]
        );

        let wh: Vec<f16> = w.iter().map(|&v| block::float::f32_to_f16(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| block::float::f32_to_bf16(v)).collect();
        let mut g = c.benchmark_group("dot/F32");
        g.throughput(Throughput::Bytes(4 * n as u64));
        for &(name, k) in &tables {
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| (k.vec_dot_f32)(black_box(&w), &a))
            });
        }
        g.finish();
        let mut g = c.benchmark_group("dot/F16");
        g.throughput(Throughput::Bytes(2 * n as u64));
        for &(name, k) in &tables {
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| (k.vec_dot_f16_f32)(black_box(&wh), &a))
            });
        }
        g.finish();
        let mut g = c.benchmark_group("dot/BF16");
        g.throughput(Throughput::Bytes(2 * n as u64));
        for &(name, k) in &tables {
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| (k.vec_dot_bf16_f32)(black_box(&wb), &a))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = configure();
    targets = bench_quantize, bench_quantize_tensor, bench_dot
}
criterion_main!(benches);
