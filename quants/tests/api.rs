//! The checked tensor API: error classes, imatrix semantics, alignment, thread-count
//! independence, and agreement of every kernel table the host supports with the scalar one.
//!
//! Only `kquant_formats_through_the_api` touches the K-quant formats; every other test uses the
//! float and legacy formats.

use half::{bf16, f16};
use longquant_quants::block;
use longquant_quants::simd::{available, scalar_kernels, Kernels};
use longquant_quants::tensor::{
    self, dequantize_row, dequantize_tensor, quantize_row, quantize_tensor, vec_dot, vec_dot_type,
};
use longquant_quants::{BlockFormat, QuantError};

const LEGACY_AND_FLOAT: [BlockFormat; 8] = [
    BlockFormat::F32,
    BlockFormat::F16,
    BlockFormat::BF16,
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
];

const KQUANTS: [BlockFormat; 3] = [BlockFormat::Q4_K, BlockFormat::Q5_K, BlockFormat::Q6_K];

/// xorshift64 PRNG (deterministic, no `rand`).
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let u1 = (self.unit() as f64).max(1e-12);
        let u2 = self.unit() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn gauss_vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.gauss() * scale).collect()
    }
}

fn bytes_for(fmt: BlockFormat, n: usize) -> Vec<u8> {
    vec![0u8; fmt.row_size(n).expect("test sizes are block multiples")]
}

fn quantized(fmt: BlockFormat, x: &[f32], qw: Option<&[f32]>) -> Vec<u8> {
    let mut out = bytes_for(fmt, x.len());
    quantize_row(fmt, x, qw, &mut out).expect("valid input");
    out
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

// ---------------------------------------------------------------------------------------------
// Error classes

#[test]
fn row_not_block_multiple() {
    let x = vec![0.5f32; 33];
    let mut dst = vec![0u8; 64];
    assert_eq!(
        quantize_row(BlockFormat::Q4_0, &x, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple {
            format: BlockFormat::Q4_0,
            len: 33,
            block: 32
        })
    );
    // A matrix whose rows are not whole blocks, even though the total is.
    let x = vec![0.5f32; 48 * 32];
    let mut dst = vec![0u8; BlockFormat::Q8_0.row_size(48 * 32).unwrap_or(0)];
    assert_eq!(
        quantize_tensor(BlockFormat::Q8_0, &x, 48, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple {
            format: BlockFormat::Q8_0,
            len: 48,
            block: 32
        })
    );
    // Checked before any kernel runs, so K formats report it too.
    let x = vec![0.5f32; 576];
    let mut dst = vec![0u8; 1000];
    assert_eq!(
        quantize_row(BlockFormat::Q4_K, &x, None, &mut dst),
        Err(QuantError::RowNotBlockMultiple {
            format: BlockFormat::Q4_K,
            len: 576,
            block: 256
        })
    );
    let mut y = vec![0.0f32; 40];
    assert!(matches!(
        dequantize_row(BlockFormat::Q5_1, &[0u8; 30], &mut y),
        Err(QuantError::RowNotBlockMultiple { len: 40, .. })
    ));
    assert!(matches!(
        vec_dot(BlockFormat::Q8_0, &[], &[], 31),
        Err(QuantError::RowNotBlockMultiple { len: 31, .. })
    ));
}

#[test]
fn non_finite_reports_the_index() {
    for fmt in LEGACY_AND_FLOAT {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.25f32; 64];
            x[37] = bad;
            let mut dst = bytes_for(fmt, 64);
            match quantize_row(fmt, &x, None, &mut dst) {
                Err(QuantError::NonFinite { index, value }) => {
                    assert_eq!(index, 37, "{fmt:?}");
                    assert_eq!(value.to_bits(), bad.to_bits(), "{fmt:?}");
                }
                other => panic!("{fmt:?} {bad}: {other:?}"),
            }
        }
    }
}

#[test]
fn non_finite_in_tensor_reports_smallest_flat_index() {
    let row_len = 128;
    let rows = 600;
    let mut rng = Rng(17);
    let mut x = rng.gauss_vec(row_len * rows, 1.0);
    // Several bad values in different rows (and so, with 4 threads, different tasks).
    x[590 * row_len + 3] = f32::NAN;
    x[333 * row_len + 100] = f32::NEG_INFINITY;
    x[333 * row_len + 101] = f32::NAN;
    x[100 * row_len + 7] = f32::INFINITY;
    for threads in [1, 4] {
        let mut dst = bytes_for(BlockFormat::Q8_0, x.len());
        let r = in_pool(threads, || {
            quantize_tensor(BlockFormat::Q8_0, &x, row_len, None, &mut dst)
        });
        assert_eq!(
            r,
            Err(QuantError::NonFinite {
                index: 100 * row_len + 7,
                value: f32::INFINITY
            }),
            "{threads} threads"
        );
    }
}

#[test]
fn length_mismatches() {
    let x = vec![1.0f32; 64];
    // dst one byte short / long.
    for delta in [-1i64, 1] {
        let len = (BlockFormat::Q4_1.row_size(64).unwrap_or(0) as i64 + delta) as usize;
        let mut dst = vec![0u8; len];
        assert_eq!(
            quantize_row(BlockFormat::Q4_1, &x, None, &mut dst),
            Err(QuantError::LengthMismatch {
                what: "bytes",
                expected: 40,
                got: len
            })
        );
    }
    // imatrix of the wrong length.
    let mut dst = bytes_for(BlockFormat::Q4_0, 64);
    assert_eq!(
        quantize_row(BlockFormat::Q4_0, &x, Some(&[1.0; 32]), &mut dst),
        Err(QuantError::LengthMismatch {
            what: "importance weights",
            expected: 64,
            got: 32
        })
    );
    // Tensor: imatrix is per column.
    let mut dst = bytes_for(BlockFormat::Q4_0, 64);
    assert_eq!(
        quantize_tensor(BlockFormat::Q4_0, &x, 32, Some(&[1.0; 64]), &mut dst),
        Err(QuantError::LengthMismatch {
            what: "importance weights",
            expected: 32,
            got: 64
        })
    );
    // Tensor: not a whole number of rows.
    let mut dst = bytes_for(BlockFormat::Q8_0, 64);
    assert!(matches!(
        quantize_tensor(BlockFormat::Q8_0, &x[..48], 32, None, &mut dst),
        Err(QuantError::LengthMismatch {
            expected: 32,
            got: 48,
            ..
        })
    ));
    // Tensor: zero-width rows of a non-empty matrix.
    assert!(matches!(
        quantize_tensor(BlockFormat::F32, &x, 0, None, &mut dst),
        Err(QuantError::LengthMismatch {
            expected: 0,
            got: 64,
            ..
        })
    ));
    // Dequantize: source bytes of the wrong length.
    let mut y = vec![0.0f32; 64];
    assert_eq!(
        dequantize_row(BlockFormat::Q8_0, &[0u8; 67], &mut y),
        Err(QuantError::LengthMismatch {
            what: "bytes",
            expected: 68,
            got: 67
        })
    );
    assert!(matches!(
        dequantize_tensor(BlockFormat::F16, &[0u8; 100], 32, &mut y),
        Err(QuantError::LengthMismatch {
            expected: 128,
            got: 100,
            ..
        })
    ));
    // Dot: weights and activations checked separately.
    let w = quantized(BlockFormat::Q4_0, &x, None);
    let a = quantized(BlockFormat::Q8_0, &x, None);
    assert!(matches!(
        vec_dot(BlockFormat::Q4_0, &w[1..], &a, 64),
        Err(QuantError::LengthMismatch {
            what: "weight bytes",
            ..
        })
    ));
    assert!(matches!(
        vec_dot(BlockFormat::Q4_0, &w, &a[..34], 64),
        Err(QuantError::LengthMismatch {
            what: "activation bytes",
            expected: 68,
            got: 34
        })
    ));
}

#[test]
fn bad_importance_and_unsupported() {
    let x = vec![1.0f32; 32];
    let mut dst = bytes_for(BlockFormat::Q5_0, 32);
    for bad in [f32::NAN, -1.0, f32::INFINITY] {
        let mut qw = vec![1.0f32; 32];
        qw[9] = bad;
        match quantize_row(BlockFormat::Q5_0, &x, Some(&qw), &mut dst) {
            Err(QuantError::BadImportance { index: 9, value }) => {
                assert_eq!(value.to_bits(), bad.to_bits())
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let x = vec![1.0f32; 256];
    let mut dst = bytes_for(BlockFormat::Q8_K, 256);
    assert_eq!(
        quantize_row(BlockFormat::Q8_K, &x, Some(&[1.0; 256]), &mut dst),
        Err(QuantError::Unsupported {
            op: "importance-weighted quantization",
            format: BlockFormat::Q8_K
        })
    );
    assert!(matches!(
        vec_dot(BlockFormat::Q8_K, &dst, &dst, 256),
        Err(QuantError::Unsupported {
            format: BlockFormat::Q8_K,
            ..
        })
    ));
}

#[test]
fn empty_matrix_is_fine() {
    for fmt in LEGACY_AND_FLOAT {
        assert_eq!(quantize_tensor(fmt, &[], 64, None, &mut []), Ok(()));
        assert_eq!(quantize_tensor(fmt, &[], 0, None, &mut []), Ok(()));
        assert_eq!(dequantize_tensor(fmt, &[], 64, &mut []), Ok(()));
        assert_eq!(vec_dot(fmt, &[], &[], 0), Ok(0.0));
    }
}

// ---------------------------------------------------------------------------------------------
// Semantics

#[test]
fn imatrix_used_where_ggml_uses_it() {
    let mut rng = Rng(3);
    let x = rng.gauss_vec(256, 1.0);
    let qw: Vec<f32> = (0..256)
        .map(|i| if i % 7 == 0 { 50.0 } else { 0.01 + rng.unit() })
        .collect();
    // Ignored: Q8_0 and the floats give the same bytes with and without.
    for fmt in [
        BlockFormat::F32,
        BlockFormat::F16,
        BlockFormat::BF16,
        BlockFormat::Q8_0,
    ] {
        assert_eq!(
            quantized(fmt, &x, Some(&qw)),
            quantized(fmt, &x, None),
            "{fmt:?}"
        );
    }
    // Used: the weighted quantizer runs (and on this data it picks different codes).
    let q = quantized(BlockFormat::Q4_0, &x, Some(&qw));
    assert_ne!(q, quantized(BlockFormat::Q4_0, &x, None));
    let mut direct = vec![block::q4_0::BlockQ4_0::ZERO; 8];
    block::q4_0::quantize_row_q4_0_imatrix(&x, &mut direct, &qw);
    assert_eq!(q, block::blocks_as_bytes(&direct));
    for fmt in [BlockFormat::Q4_1, BlockFormat::Q5_0, BlockFormat::Q5_1] {
        assert_ne!(
            quantized(fmt, &x, Some(&qw)),
            quantized(fmt, &x, None),
            "{fmt:?}"
        );
    }
}

#[test]
fn tensor_equals_row_by_row() {
    // quantize_tensor applies the per-column imatrix to each row, and each row is quantized as
    // a whole row (ggml's σ² is per row).
    let row_len = 96;
    let rows = 13;
    let mut rng = Rng(77);
    let x = rng.gauss_vec(row_len * rows, 0.3);
    let qw: Vec<f32> = (0..row_len).map(|_| rng.unit() * 3.0).collect();
    for fmt in LEGACY_AND_FLOAT {
        let mut all = bytes_for(fmt, x.len());
        quantize_tensor(fmt, &x, row_len, Some(&qw), &mut all).expect("valid");
        let mut rowwise = Vec::new();
        for row in x.chunks(row_len) {
            rowwise.extend(quantized(fmt, row, Some(&qw)));
        }
        assert_eq!(all, rowwise, "{fmt:?}");
        let mut back = vec![0.0; x.len()];
        dequantize_tensor(fmt, &all, row_len, &mut back).expect("valid");
        let mut back_rows = vec![0.0; x.len()];
        let rs = fmt.row_size(row_len).unwrap_or(0);
        for (r, out) in back_rows.chunks_mut(row_len).enumerate() {
            dequantize_row(fmt, &all[r * rs..(r + 1) * rs], out).expect("valid");
        }
        assert_eq!(back, back_rows, "{fmt:?}");
    }
}

#[test]
fn same_bytes_at_1_and_4_threads() {
    let row_len = 256;
    let rows = 700; // 128 rows per task at least: several tasks per thread
    let mut rng = Rng(123);
    let x = rng.gauss_vec(row_len * rows, 0.05);
    let qw: Vec<f32> = (0..row_len).map(|_| rng.unit()).collect();
    for fmt in LEGACY_AND_FLOAT {
        for imatrix in [None, Some(qw.as_slice())] {
            let run = |threads| {
                in_pool(threads, || {
                    let mut q = bytes_for(fmt, x.len());
                    quantize_tensor(fmt, &x, row_len, imatrix, &mut q).expect("valid");
                    let mut y = vec![0.0f32; x.len()];
                    dequantize_tensor(fmt, &q, row_len, &mut y).expect("valid");
                    (q, y.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                })
            };
            let one = run(1);
            let four = run(4);
            assert!(one == four, "{fmt:?} imatrix={}", imatrix.is_some());
        }
    }
}

#[test]
fn misaligned_buffers_give_the_same_results() {
    let mut rng = Rng(5);
    let x = rng.gauss_vec(128, 2.0);
    for fmt in LEGACY_AND_FLOAT {
        let aligned = quantized(fmt, &x, None);
        // Offset by one byte inside a larger buffer: misaligned for every multi-byte block.
        let mut storage = vec![0u8; aligned.len() + 1];
        quantize_row(fmt, &x, None, &mut storage[1..]).expect("valid");
        assert_eq!(&storage[1..], aligned.as_slice(), "{fmt:?}");
        let mut y1 = vec![0.0; 128];
        let mut y2 = vec![0.0; 128];
        dequantize_row(fmt, &aligned, &mut y1).expect("valid");
        dequantize_row(fmt, &storage[1..], &mut y2).expect("valid");
        assert_eq!(y1, y2, "{fmt:?}");
        let act_fmt = vec_dot_type(fmt);
        let act = quantized(act_fmt, &x, None);
        let mut act_storage = vec![0u8; act.len() + 1];
        act_storage[1..].copy_from_slice(&act);
        assert_eq!(
            vec_dot(fmt, &aligned, &act, 128),
            vec_dot(fmt, &storage[1..], &act_storage[1..], 128),
            "{fmt:?}"
        );
    }
}

#[test]
fn float_formats_through_bytes() {
    let mut rng = Rng(9);
    let x = rng.gauss_vec(100, 10.0);
    let raw = quantized(BlockFormat::F32, &x, None);
    let expect: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(raw, expect);
    let h = quantized(BlockFormat::F16, &x, None);
    let expect: Vec<u8> = x
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(h, expect);
    let b = quantized(BlockFormat::BF16, &x, None);
    let expect: Vec<u8> = x
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(b, expect);
    let mut y = vec![0.0; 100];
    dequantize_row(BlockFormat::F32, &raw, &mut y).expect("valid");
    assert_eq!(y, x);
}

#[test]
fn vec_dot_types() {
    for fmt in [BlockFormat::F32, BlockFormat::F16, BlockFormat::BF16] {
        assert_eq!(vec_dot_type(fmt), BlockFormat::F32);
    }
    for fmt in [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
    ] {
        assert_eq!(vec_dot_type(fmt), BlockFormat::Q8_0);
    }
    for fmt in KQUANTS {
        assert_eq!(vec_dot_type(fmt), BlockFormat::Q8_K);
    }
    assert!(tensor::uses_imatrix(BlockFormat::Q4_K));
    assert!(!tensor::uses_imatrix(BlockFormat::Q8_0));
}

/// Dequantize both operands and take the dot in f64; tolerance relative to Σ|w·a|.
fn dot_reference(fmt: BlockFormat, w: &[u8], act: &[u8], n: usize) -> (f64, f64) {
    let mut dw = vec![0.0f32; n];
    let mut da = vec![0.0f32; n];
    dequantize_row(fmt, w, &mut dw).expect("valid");
    dequantize_row(vec_dot_type(fmt), act, &mut da).expect("valid");
    let exact = dw.iter().zip(&da).map(|(&a, &b)| a as f64 * b as f64).sum();
    let scale = dw
        .iter()
        .zip(&da)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum();
    (exact, scale)
}

#[test]
fn vec_dot_matches_dequantized_reference() {
    let n = 4096;
    let mut rng = Rng(2024);
    let w = rng.gauss_vec(n, 0.02);
    let a = rng.gauss_vec(n, 1.5);
    for fmt in LEGACY_AND_FLOAT {
        let qw = quantized(fmt, &w, None);
        let qa = quantized(vec_dot_type(fmt), &a, None);
        let got = vec_dot(fmt, &qw, &qa, n).expect("valid") as f64;
        let (exact, scale) = dot_reference(fmt, &qw, &qa, n);
        assert!(
            (got - exact).abs() <= 1e-5 * scale,
            "{fmt:?}: {got} vs {exact}"
        );
        // And the quantized dot is close to the float dot: the whole point of the format.
        let float_dot: f64 = w.iter().zip(&a).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!(
            (got - float_dot).abs() <= 0.05 * scale,
            "{fmt:?}: {got} vs float {float_dot}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel tables

fn compare_tables(fmts: &[BlockFormat], n: usize) {
    let scalar = scalar_kernels();
    let mut rng = Rng(31337);
    let inputs = [
        ("gaussian", rng.gauss_vec(n, 1.0)),
        ("zeros", vec![0.0; n]),
        ("constant", vec![-0.3; n]),
        ("tiny", rng.gauss_vec(n, 1e-7)),
        ("huge", rng.gauss_vec(n, 5e3)),
        (
            "outliers",
            (0..n)
                .map(|i| {
                    if i % 97 == 3 {
                        30.0
                    } else {
                        rng.gauss() * 1e-3
                    }
                })
                .collect(),
        ),
    ];
    let qw: Vec<f32> = (0..n).map(|_| rng.unit() * 2.0).collect();
    let act = rng.gauss_vec(n, 1.0);
    for (table_name, k) in available() {
        let k: &Kernels = k;
        for &fmt in fmts {
            for (case, x) in &inputs {
                for imatrix in [None, Some(qw.as_slice())] {
                    let mut a = bytes_for(fmt, n);
                    let mut b = bytes_for(fmt, n);
                    tensor::quantize_row_with(k, fmt, x, imatrix, &mut a).expect("valid");
                    tensor::quantize_row_with(scalar, fmt, x, imatrix, &mut b).expect("valid");
                    assert!(
                        a == b,
                        "{table_name} {fmt:?} {case}: quantized bytes differ"
                    );
                }
                let q = quantized(fmt, x, None);
                let mut ya = vec![0.0f32; n];
                let mut yb = vec![0.0f32; n];
                tensor::dequantize_row_with(k, fmt, &q, &mut ya).expect("valid");
                tensor::dequantize_row_with(scalar, fmt, &q, &mut yb).expect("valid");
                assert!(
                    ya.iter().zip(&yb).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{table_name} {fmt:?} {case}: dequantized values differ"
                );
                let qa = quantized(vec_dot_type(fmt), &act, None);
                let da = tensor::vec_dot_with(k, fmt, &q, &qa, n).expect("valid") as f64;
                let db = tensor::vec_dot_with(scalar, fmt, &q, &qa, n).expect("valid") as f64;
                let (_, scale) = dot_reference(fmt, &q, &qa, n);
                assert!(
                    (da - db).abs() <= 1e-5 * scale + 1e-30,
                    "{table_name} {fmt:?} {case}: dot {da} vs scalar {db}"
                );
            }
        }
    }
}

/// `LONGQUANT_FORCE_SCALAR=1` selects the scalar table. The selection is made once per process,
/// so the test re-runs itself in a child process with the variable set.
#[test]
fn force_scalar_env_selects_scalar_table() {
    if std::env::var_os(longquant_quants::simd::FORCE_SCALAR_ENV).is_some_and(|v| v == "1") {
        assert!(std::ptr::eq(
            longquant_quants::simd::kernels(),
            scalar_kernels()
        ));
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "force_scalar_env_selects_scalar_table",
            "--test-threads",
            "1",
        ])
        .env(longquant_quants::simd::FORCE_SCALAR_ENV, "1")
        .status()
        .expect("spawn test binary");
    assert!(status.success());
}

#[test]
fn every_available_table_matches_scalar_legacy_and_float() {
    compare_tables(&LEGACY_AND_FLOAT, 1024);
}

/// The one test here that runs the K-quant kernels (owned by `q4_k.rs`..`q8_k.rs`): API
/// plumbing for Q4_K/Q5_K/Q6_K/Q8_K, thread independence and table agreement.
#[test]
fn kquant_formats_through_the_api() {
    let row_len = 512;
    let rows = 70;
    let mut rng = Rng(4242);
    let x = rng.gauss_vec(row_len * rows, 0.02);
    let qw: Vec<f32> = (0..row_len).map(|_| rng.unit()).collect();
    for fmt in KQUANTS {
        for imatrix in [None, Some(qw.as_slice())] {
            let run = |threads| {
                in_pool(threads, || {
                    let mut q = bytes_for(fmt, x.len());
                    quantize_tensor(fmt, &x, row_len, imatrix, &mut q).expect("valid");
                    q
                })
            };
            let q = run(1);
            assert_eq!(q, run(4), "{fmt:?}");
            let mut y = vec![0.0f32; x.len()];
            dequantize_tensor(fmt, &q, row_len, &mut y).expect("valid");
            let err: f64 = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum();
            let energy: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
            // 4-bit formats keep RMSE well under 15% of the signal on gaussian data.
            assert!(
                (err / energy).sqrt() < 0.15,
                "{fmt:?}: relative RMSE {}",
                (err / energy).sqrt()
            );
        }
        // Dot against Q8_K activations, through bytes.
        let w = &x[..row_len];
        let a = rng.gauss_vec(row_len, 1.0);
        let qw8 = quantized(fmt, w, None);
        let qa = quantized(BlockFormat::Q8_K, &a, None);
        let got = vec_dot(fmt, &qw8, &qa, row_len).expect("valid") as f64;
        let (exact, scale) = dot_reference(fmt, &qw8, &qa, row_len);
        assert!(
            (got - exact).abs() <= 1e-5 * scale,
            "{fmt:?}: {got} vs {exact}"
        );
        // Q8_K blocks are f32-aligned (align 4): a misaligned activation buffer still works.
        let mut shifted = vec![0u8; qa.len() + 2];
        shifted[2..].copy_from_slice(&qa);
        assert_eq!(vec_dot(fmt, &qw8, &shifted[2..], row_len), Ok(got as f32));
    }
    // Q8_K round trip as an activation target.
    let a = rng.gauss_vec(512, 3.0);
    let q8k = quantized(BlockFormat::Q8_K, &a, None);
    let mut back = vec![0.0f32; 512];
    dequantize_row(BlockFormat::Q8_K, &q8k, &mut back).expect("valid");
    for (blk_x, blk_y) in a.chunks(256).zip(back.chunks(256)) {
        let amax = blk_x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (&p, &q) in blk_x.iter().zip(blk_y) {
            assert!((p - q).abs() <= amax / 127.0 * 0.51 + 1e-6, "{p} vs {q}");
        }
    }
    compare_tables(&KQUANTS, 1024);
}
