//! Bench binary: K-quant weight × Q8_K activation matmuls (the forward pass's batched
//! products) with every kernel variant this CPU runs (AVX-512 tiles, AVX2 tiles, row-by-row
//! dots), on a fixed rayon pool, so the variants can be compared back to back on one machine.
//!
//! Usage: `cargo bench --bench kquant_matmul -- [THREADS] [FORMAT...]`
//! (THREADS defaults to 2; FORMAT is any of q2_k q3_k q4_k q5_k q6_k iq4_xs, default all). Prints one line per
//! (format, shape, tokens, variant): the best of several timed calls (variants interleaved), in milliseconds and in
//! giga weight·token products per second, and the speed relative to the row-by-row variant.
use longquant::model::mm_kquant_bench::{self as mk, Variant};
use longquant::quants::block::{iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k::BlockQ8K};
use longquant::quants::simd::kernels;
use longquant::quants::QK_K;
use std::time::{Duration, Instant};

/// (rows, cols): SmolLM2's ffn_down (576 × 1536); 1536 × 512 stands in for its 1536 × 576
/// ffn_up/gate, whose 576-wide rows cannot hold 256-weight super-blocks; a Llama-7B-sized
/// square.
const SHAPES: [(usize, usize); 3] = [(576, 1536), (1536, 512), (4096, 4096)];
const TOKENS: [usize; 2] = [64, 256];
/// Rounds of timing per product; each round times every variant once.
const ROUNDS: usize = 3;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// A matmul entry point of `mm_kquant_bench`.
type MatmulFn<W> = fn(Variant, &[W], usize, &[BlockQ8K], usize, usize, &mut [f32]);

/// Best wall time of `f` over at least 3 calls and about 0.2 s, after one warm-up call.
fn best_time(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut n = 0;
    while n < 3 || start.elapsed() < Duration::from_millis(200) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        n += 1;
    }
    best
}

/// Times every supported variant of one product and prints a line each.
fn run<W>(
    name: &str,
    (rows, cols): (usize, usize),
    n_tok: usize,
    w: &[W],
    a: &[BlockQ8K],
    matmul: MatmulFn<W>,
) {
    let bpr = cols / QK_K;
    let mut out = vec![0.0f32; n_tok * rows];
    // Variants take turns, so a change in the machine's load hits all of them alike.
    let mut times: Vec<(Variant, Duration)> = mk::supported()
        .into_iter()
        .map(|v| (v, Duration::MAX))
        .collect();
    for _ in 0..ROUNDS {
        for (v, best) in &mut times {
            let t = best_time(|| matmul(*v, w, bpr, a, n_tok, rows, &mut out));
            *best = (*best).min(t);
        }
    }
    let rows_t = times
        .iter()
        .find(|(v, _)| *v == Variant::Rows)
        .map_or(Duration::ZERO, |&(_, t)| t);
    for (v, t) in times {
        let s = t.as_secs_f64();
        let gops = (rows * cols * n_tok) as f64 / s / 1e9;
        println!(
            "{name:6} {rows:5}x{cols:<5} tok {n_tok:4} {:7} {:9.3} ms {gops:7.2} G/s  x{:.2} vs Rows",
            format!("{v:?}"),
            s * 1e3,
            rows_t.as_secs_f64() / s
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let threads = args.first().and_then(|a| a.parse().ok()).unwrap_or(2usize);
    let formats: Vec<&str> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let want = |f: &str| formats.is_empty() || formats.contains(&f);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "threads {threads}, variants {:?} (forward pass uses {:?})",
        mk::supported(),
        mk::best()
    );
    let k = kernels();
    pool.install(|| {
        for (si, &(rows, cols)) in SHAPES.iter().enumerate() {
            let bpr = cols / QK_K;
            let x = values(rows * cols, 1 + si as u64);
            let max_tok = TOKENS.iter().copied().max().unwrap_or(1);
            let mut a = vec![BlockQ8K::default(); max_tok * bpr];
            (k.quantize_row_q8_k)(&values(max_tok * cols, 99), &mut a);
            if want("q2_k") {
                let mut w = vec![q2_k::BlockQ2K::default(); rows * bpr];
                (k.quantize_row_q2_k)(&x, &mut w);
                for n in TOKENS {
                    run("q2_k", (rows, cols), n, &w, &a[..n * bpr], mk::matmul_q2k);
                }
            }
            if want("q3_k") {
                let mut w = vec![q3_k::BlockQ3K::default(); rows * bpr];
                (k.quantize_row_q3_k)(&x, &mut w);
                for n in TOKENS {
                    run("q3_k", (rows, cols), n, &w, &a[..n * bpr], mk::matmul_q3k);
                }
            }
            if want("iq4_xs") {
                let mut w = vec![iq4_xs::BlockIQ4XS::default(); rows * bpr];
                (k.quantize_row_iq4_xs)(&x, &mut w);
                for n in TOKENS {
                    run(
                        "iq4_xs",
                        (rows, cols),
                        n,
                        &w,
                        &a[..n * bpr],
                        mk::matmul_iq4xs,
                    );
                }
            }
            if want("q4_k") {
                let mut w = vec![q4_k::BlockQ4K::default(); rows * bpr];
                (k.quantize_row_q4_k)(&x, &mut w);
                for n in TOKENS {
                    run("q4_k", (rows, cols), n, &w, &a[..n * bpr], mk::matmul_q4k);
                }
            }
            if want("q5_k") {
                let mut w = vec![q5_k::BlockQ5K::default(); rows * bpr];
                (k.quantize_row_q5_k)(&x, &mut w);
                for n in TOKENS {
                    run("q5_k", (rows, cols), n, &w, &a[..n * bpr], mk::matmul_q5k);
                }
            }
            if want("q6_k") {
                let mut w = vec![q6_k::BlockQ6K::default(); rows * bpr];
                (k.quantize_row_q6_k)(&x, &mut w);
                for n in TOKENS {
                    run("q6_k", (rows, cols), n, &w, &a[..n * bpr], mk::matmul_q6k);
                }
            }
        }
    });
    Ok(())
}
