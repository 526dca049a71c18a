//! The sweep from a GGUF source (issue 6): `fixtures/tiny-natural` (HF folder, BF16 weights) is
//! converted to an F32 GGUF in a temporary folder, and that GGUF is swept with Q8_0 and Q4_K_M on
//! real English text (ctx 256, 4 chunks). The same levels are then swept from the HF folder.
//!
//! Asserts:
//! - the GGUF path: the source file itself is the reference (type F32, its own size), sizes and
//!   bits per weight fall Q8_0 > Q4_K_M while mean KLD rises, every level is smaller than the
//!   reference, diverges a little but not wildly, and the temporary folder is removed;
//! - the JSON document carries the printed table's numbers;
//! - the two paths agree: widening BF16 to F32 is exact, so quantizing the F32 GGUF gives the same
//!   tensors as converting the folder straight to the level, and the reference is the same F32
//!   file; hence the same bits per weight, the same reference PPL and bit-for-bit the same PPL,
//!   KLD, percentiles and same-top-p for each level (and the Q8_0 file made each way is checked
//!   byte for byte);
//! - a quantized GGUF is refused as a sweep source before any evaluation.
//!
//! Needs `fixtures/fetch.sh` (for the text); without it the test skips with a note, or fails when
//! CI=true.
mod common;
use common::require as need;
use longquant::convert::mix::FileType;
use longquant::convert::pipeline::{convert, ConvertOptions, TypeChoice};
use longquant::convert::quantize::{quantize, QuantizeOptions};
use longquant::eval::sweep::{default_compare, sweep, SweepError, SweepOptions, SweepReport};
use std::path::Path;

fn options(types: &[FileType], work: &Path) -> SweepOptions {
    SweepOptions {
        types: types.to_vec(),
        compare: default_compare(256, Some(4)),
        threads: None,
        imatrix: None,
        bound: None,
        top_k: 32,
        work_dir: Some(work.to_path_buf()),
        device: Default::default(),
        caches: Vec::new(),
    }
}

/// Each table row's printed columns against the JSON row, at the printed precision.
fn check_json_matches_table(r: &SweepReport, types: &[FileType]) {
    let table = r.table();
    let doc = r.to_json();
    let rows = doc["rows"].as_array().expect("rows array");
    let lines: Vec<&str> = table
        .lines()
        .filter(|l| {
            types
                .iter()
                .any(|t| l.starts_with(&format!("{} ", t.name())))
        })
        .collect();
    assert_eq!(lines.len(), rows.len(), "{table}");
    assert_eq!(rows.len(), types.len());
    for (line, row) in lines.iter().zip(rows) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], row["type"].as_str().unwrap());
        let num = |i: usize| cols[i].trim_end_matches('%').parse::<f64>().unwrap();
        let json = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("no {k}"));
        for (i, key, tol) in [
            (1, "gib", 5e-5),
            (2, "bits_per_weight", 5e-3),
            (3, "ppl", 5e-5),
            (4, "delta_ppl", 5e-5),
            (5, "kld_mean", 5e-7),
            (6, "kld_p99", 5e-7),
            (7, "same_top_p", 5e-3),
            (8, "long_kld", 5e-7),
            (9, "quantize_seconds", 0.05 + 1e-9),
        ] {
            assert!(
                (num(i) - json(key)).abs() <= tol,
                "{key}: table {} vs JSON {}",
                num(i),
                json(key)
            );
        }
        assert_eq!(cols.get(10) == Some(&"*"), row["pareto"].as_bool().unwrap());
        assert_eq!(row["compare"]["kld_mean"], row["kld_mean"]);
        assert_eq!(row["compare"]["ppl_base"].as_f64(), Some(r.reference_ppl));
    }
    assert_eq!(doc["reference"]["type"].as_str(), Some("F32"));
    assert_eq!(
        doc["reference"]["size_bytes"].as_u64(),
        Some(r.reference_bytes)
    );
}

#[test]
fn sweep_from_f32_gguf_matches_folder_sweep() {
    let root = common::root();
    let (Some(folder), Some(text)) = (
        need(root.join("fixtures/tiny-natural")),
        need(root.join("fixtures/cache/text/licenses.txt")),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let types = [FileType::Q8_0, FileType::Q4_K_M];

    // The GGUF source: the folder converted to F32, as the folder sweep makes its reference.
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("tiny-natural.F32.gguf");
    let copts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::F32),
        ..ConvertOptions::default()
    };
    convert(&folder, &src, &copts, &mut |_| {}).unwrap();
    let src_bytes = std::fs::metadata(&src).unwrap().len();

    // 1. The sweep from the GGUF.
    let work = tempfile::tempdir().unwrap();
    let g = sweep(&src, &text, &options(&types, work.path()), &mut |m| {
        eprintln!("gguf: {m}")
    })
    .unwrap();
    eprintln!("{}", g.table());
    assert_eq!(g.reference_type, "F32");
    assert_eq!(g.reference_bytes, src_bytes);
    assert!(g.reference_ppl.is_finite() && g.reference_ppl > 1.0);
    assert_eq!(
        g.rows.iter().map(|x| x.file_type).collect::<Vec<_>>(),
        types
    );
    let (q8, q4) = (&g.rows[0], &g.rows[1]);
    assert!(q8.size_bytes > q4.size_bytes, "{}", g.table());
    assert!(q8.bits_per_weight > q4.bits_per_weight);
    // Q8_0 is 8.5 bits per quantized weight; the F32 norms barely move the mean. Q4_K_M mixes
    // 4.5-bit Q4_K with some Q6_K/Q8_0: well under Q8_0, well over 4.
    assert!(
        (8.4..9.0).contains(&q8.bits_per_weight),
        "{}",
        q8.bits_per_weight
    );
    assert!(
        (4.4..6.5).contains(&q4.bits_per_weight),
        "{}",
        q4.bits_per_weight
    );
    assert!(
        q8.report.kld.value < q4.report.kld.value,
        "KLD not ordered: {}",
        g.table()
    );
    assert!(q8.report.same_top_p.value > q4.report.same_top_p.value);
    for row in &g.rows {
        assert!(row.size_bytes < src_bytes);
        assert!(row.report.kld.value > 0.0 && row.report.kld.value < 0.1);
        assert!(row.report.kld_percentiles.min > -1e-6);
        assert!(row.report.kld_percentiles.p99 >= row.report.kld.value);
        assert!(row.report.same_top_p.value > 80.0 && row.report.same_top_p.value < 100.0);
        assert_eq!(row.report.n_tokens_scored, 4 * (256 - 1 - 128));
        assert_eq!(row.report.ppl_base.value, g.reference_ppl);
        assert!(row.pareto, "{} off the front", row.file_type.name());
        assert!(row.long_kld().is_finite());
    }
    // The sweep's temporary folder is gone; the source is untouched.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(&src).unwrap().len(), src_bytes);
    check_json_matches_table(&g, &types);

    // 2. The same levels from the folder: same tensors, so the same numbers.
    let f = sweep(&folder, &text, &options(&types, work.path()), &mut |m| {
        eprintln!("folder: {m}")
    })
    .unwrap();
    eprintln!("{}", f.table());
    assert_eq!(f.reference_type, "F32");
    assert_eq!(f.reference_bytes, src_bytes);
    assert_eq!(f.reference_ppl, g.reference_ppl);
    for (a, b) in g.rows.iter().zip(&f.rows) {
        let name = a.file_type.name();
        assert_eq!(a.file_type, b.file_type);
        assert_eq!(a.size_bytes, b.size_bytes, "{name}");
        assert_eq!(a.bits_per_weight, b.bits_per_weight, "{name}");
        assert_eq!(a.report.ppl_model.value, b.report.ppl_model.value, "{name}");
        assert_eq!(a.report.kld.value, b.report.kld.value, "{name}");
        assert_eq!(
            a.report.kld_percentiles.p99, b.report.kld_percentiles.p99,
            "{name}"
        );
        assert_eq!(
            a.report.same_top_p.value, b.report.same_top_p.value,
            "{name}"
        );
        assert_eq!(a.report.rms_dp.value, b.report.rms_dp.value, "{name}");
        assert_eq!(a.report.chunk_kld, b.report.chunk_kld, "{name}");
    }
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);

    // Why they agree: the level made from the folder and the level quantized from the F32 GGUF
    // are the same file, byte for byte.
    let q8_path = src_dir.path().join("tiny-natural.Q8_0.gguf");
    let copts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        ..ConvertOptions::default()
    };
    convert(&folder, &q8_path, &copts, &mut |_| {}).unwrap();
    let q8_from_gguf = src_dir.path().join("requantized.Q8_0.gguf");
    quantize(
        &src,
        &q8_from_gguf,
        &QuantizeOptions::new(FileType::Q8_0),
        &mut |_| {},
    )
    .unwrap();
    let q8_bytes = std::fs::read(&q8_path).unwrap();
    assert_eq!(q8_bytes.len() as u64, g.rows[0].size_bytes);
    assert!(
        q8_bytes == std::fs::read(&q8_from_gguf).unwrap(),
        "Q8_0 files differ"
    );

    // 3. A quantized GGUF is not a reference.
    let mut steps = 0;
    let err = sweep(&q8_path, &text, &options(&types, work.path()), &mut |_| {
        steps += 1
    })
    .expect_err("a Q8_0 source must be refused");
    assert!(
        matches!(&err, SweepError::BadSource(m) if m.contains("quantized")),
        "{err}"
    );
    assert_eq!(steps, 0, "evaluation started before the refusal");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}
