//! llama.cpp's importance-matrix files, read and written by `longquant::imatrix`.
//!
//! Data: tests/data/imatrix/smollm2_c128x3.imatrix.{gguf,dat}, made by llama.cpp's `llama-imatrix`
//! on the SmolLM2 fixture (3 chunks of 128 tokens of the fixture text), and gguf-py's reading of the
//! GGUF one (smollm2_c128x3.gguf-py.json); recipe in scripts/imatrix/make_fixture.sh. These are
//! committed, so the tests need no fixture download.
use longquant::formats::gguf::{write_gguf, Metadata, TensorSpec, WriteOptions};
use longquant::formats::GgmlType;
use longquant::imatrix::{Imatrix, ImatrixEntry, ImatrixError, ImatrixFormat};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/imatrix")
        .join(name)
}

#[test]
fn gguf_from_llama_imatrix_matches_gguf_py() {
    let m = Imatrix::read(&data("smollm2_c128x3.imatrix.gguf")).unwrap();
    let oracle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data("smollm2_c128x3.gguf-py.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m.format, ImatrixFormat::Gguf);
    let md = &oracle["metadata"];
    assert_eq!(m.chunk_count as u64, md["chunk_count"].as_u64().unwrap());
    assert_eq!(m.chunk_size as u64, md["chunk_size"].as_u64().unwrap());
    let ds: Vec<&str> = md["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(m.datasets, ds);
    let entries = oracle["entries"].as_object().unwrap();
    assert_eq!(m.len(), entries.len());
    // SmolLM2: 30 layers × 7 matrices (output is skipped without --process-output).
    assert_eq!(m.len(), 210);
    for (name, o) in entries {
        let e = m
            .entries
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"));
        let counts: Vec<f32> = o["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(e.counts, counts, "{name}");
        let n: u64 = o["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .product();
        assert_eq!(e.sums.len() as u64, n, "{name}");
        let sum: f64 = e.sums.iter().map(|&v| v as f64).sum();
        let want = o["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs(),
            "{name}: {sum} vs {want}"
        );
        for (i, bits) in o["samples"].as_object().unwrap() {
            let i: usize = i.parse().unwrap();
            assert_eq!(
                e.sums[i].to_bits() as u64,
                bits.as_u64().unwrap(),
                "{name}[{i}]"
            );
        }
        let w = m.weights_for(name).unwrap();
        assert_eq!(w.len(), e.sums.len());
        let wsum: f64 = w.iter().map(|&v| v as f64).sum();
        let want = o["weights_sum"].as_f64().unwrap();
        assert!(
            (wsum - want).abs() <= 1e-9 * want.abs(),
            "{name}: {wsum} vs {want}"
        );
        for (i, bits) in o["weights_samples"].as_object().unwrap() {
            let i: usize = i.parse().unwrap();
            assert_eq!(
                w[i].to_bits() as u64,
                bits.as_u64().unwrap(),
                "{name} w[{i}]"
            );
        }
    }
    assert!(m.weights_for("no.such.weight").is_none());
}

#[test]
fn legacy_dat_from_llama_imatrix_agrees_and_our_legacy_writer_is_byte_identical() {
    let g = Imatrix::read(&data("smollm2_c128x3.imatrix.gguf")).unwrap();
    let dat_bytes = std::fs::read(data("smollm2_c128x3.imatrix.dat")).unwrap();
    let l = Imatrix::read(&data("smollm2_c128x3.imatrix.dat")).unwrap();
    assert_eq!(l.format, ImatrixFormat::Legacy);
    assert_eq!(l.chunk_count, 3);
    assert_eq!(l.datasets, g.datasets);
    assert_eq!(
        l.entries.keys().collect::<Vec<_>>(),
        g.entries.keys().collect::<Vec<_>>()
    );
    for name in g.entries.keys() {
        let a = g.weights_for(name).unwrap();
        let b = l.weights_for(name).unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1e-30),
                "{name}: {x} vs {y}"
            );
        }
        // ncall = ⌈384 tokens / 128⌉.
        assert_eq!(l.entries[name].counts, vec![3.0]);
    }
    // The GGUF matrix converted to legacy is what llama-imatrix itself wrote, byte for byte.
    assert_eq!(g.to_legacy_bytes().unwrap(), dat_bytes);
    // And the legacy file re-serializes to itself.
    assert_eq!(l.to_legacy_bytes().unwrap(), dat_bytes);
}

#[test]
fn round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let g = Imatrix::read(&data("smollm2_c128x3.imatrix.gguf")).unwrap();
    let p = dir.path().join("rt.imatrix.gguf");
    g.write_gguf(&p, false, 0).unwrap();
    assert_eq!(Imatrix::read(&p).unwrap(), g);
    // Refuses to overwrite unless asked.
    assert!(g.write_gguf(&p, false, 0).is_err());
    g.write_gguf(&p, true, 0).unwrap();

    let q = dir.path().join("rt.dat");
    g.write_legacy(&q).unwrap();
    let l = Imatrix::read(&q).unwrap();
    assert_eq!(l.format, ImatrixFormat::Legacy);
    // Legacy → GGUF with the chunk size: sums and counts as llama-imatrix reloads them.
    let p2 = dir.path().join("from-legacy.gguf");
    assert!(matches!(
        l.write_gguf(&p2, false, 0),
        Err(ImatrixError::Unwritable(_))
    ));
    l.write_gguf(&p2, false, 128).unwrap();
    let g2 = Imatrix::read(&p2).unwrap();
    assert_eq!(g2.chunk_size, 128);
    for name in g.entries.keys() {
        assert_eq!(g2.entries[name].counts, vec![384.0]);
        let (a, b) = (g.weights_for(name).unwrap(), g2.weights_for(name).unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-30));
        }
    }

    // A MoE-shaped entry (3 experts, one without tokens) round-trips and weights follow llama-quantize.
    let mut m = g.clone();
    m.entries.clear();
    m.entries.insert(
        "blk.0.ffn_up_exps.weight".into(),
        ImatrixEntry {
            sums: vec![2.0, 4.0, 6.0, 8.0, 5.0, 5.0],
            counts: vec![2.0, 0.0, 5.0],
        },
    );
    let p3 = dir.path().join("moe.gguf");
    m.write_gguf(&p3, false, 0).unwrap();
    let back = Imatrix::read(&p3).unwrap();
    assert_eq!(back, m);
    assert_eq!(
        back.weights_for("blk.0.ffn_up_exps.weight").unwrap(),
        vec![1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    );
}

fn legacy_err(bytes: &[u8]) -> ImatrixError {
    match Imatrix::parse_legacy(bytes, Path::new("hostile.dat")) {
        Err(e) => e,
        Ok(m) => panic!("hostile legacy file accepted: {} entries", m.len()),
    }
}

#[test]
fn hostile_legacy_files_give_typed_errors() {
    let good = std::fs::read(data("smollm2_c128x3.imatrix.dat")).unwrap();
    // Every truncation inside the entries fails cleanly (the trailer is optional, as in llama.cpp).
    let entries_end = {
        let l = Imatrix::read(&data("smollm2_c128x3.imatrix.dat")).unwrap();
        good.len() - 8 - l.datasets[0].len()
    };
    for cut in (0..entries_end).step_by(997).chain([entries_end - 1]) {
        let e = legacy_err(&good[..cut]);
        assert!(
            matches!(
                e,
                ImatrixError::Truncated { .. } | ImatrixError::BadLength { .. }
            ),
            "cut {cut}: {e}"
        );
    }
    assert!(Imatrix::parse_legacy(&good[..entries_end], Path::new("x")).is_ok());
    let le = |v: i32| v.to_le_bytes();
    // No entries; negative and huge counts/lengths.
    assert!(matches!(
        legacy_err(&le(0)),
        ImatrixError::BadLength {
            what: "entry count",
            ..
        }
    ));
    assert!(matches!(
        legacy_err(&le(-5)),
        ImatrixError::BadLength { .. }
    ));
    let mut b = le(1).to_vec();
    b.extend(le(i32::MAX));
    b.extend([0u8; 16]); // enough bytes for one entry, so the name length itself is judged
    assert!(matches!(
        legacy_err(&b),
        ImatrixError::BadLength {
            what: "name length",
            ..
        }
    ));
    let entry = |name: &[u8], ncall: i32, nval: i32, vals: &[f32]| {
        let mut b = le(1).to_vec();
        b.extend(le(name.len() as i32));
        b.extend(name);
        b.extend(le(ncall));
        b.extend(le(nval));
        for v in vals {
            b.extend(v.to_le_bytes());
        }
        b
    };
    assert!(Imatrix::parse_legacy(&entry(b"w", 1, 2, &[1.0, 2.0]), Path::new("x")).is_ok());
    assert!(matches!(
        legacy_err(&entry(b"w", 1, 3, &[1.0, 2.0])),
        ImatrixError::BadLength {
            what: "value count",
            ..
        }
    ));
    assert!(matches!(
        // nval = 0 (padded so the entry count itself is plausible)
        legacy_err(&entry(b"w", 1, 0, &[0.0])),
        ImatrixError::BadLength {
            what: "value count",
            ..
        }
    ));
    assert!(matches!(
        legacy_err(&entry(b"w", -1, 1, &[1.0])),
        ImatrixError::BadLength { what: "ncall", .. }
    ));
    assert!(matches!(
        legacy_err(&entry(&[0xff, 0xfe], 1, 1, &[1.0])),
        ImatrixError::BadName { index: 0, .. }
    ));
    assert!(matches!(
        legacy_err(&entry(b"w", 1, 1, &[f32::NAN])),
        ImatrixError::BadValue { what: "sum", .. }
    ));
    assert!(matches!(
        legacy_err(&entry(b"w", 1, 1, &[-1.0])),
        ImatrixError::BadValue { .. }
    ));
    // Duplicate names.
    let mut b = le(2).to_vec();
    for _ in 0..2 {
        b.extend(&entry(b"w", 1, 1, &[1.0])[4..]);
    }
    assert!(matches!(legacy_err(&b), ImatrixError::Duplicate { .. }));
}

#[test]
fn hostile_gguf_files_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: &[(&str, Vec<u64>, GgmlType, Vec<u8>)]| {
        let p = dir.path().join(name);
        let mut md = Metadata::new();
        md.insert("general.type", "imatrix");
        let t: Vec<(TensorSpec, &[u8])> = tensors
            .iter()
            .map(|(n, d, ty, b)| (TensorSpec::new(*n, d.clone(), *ty), b.as_slice()))
            .collect();
        write_gguf(&p, &md, &t, WriteOptions::default()).unwrap();
        Imatrix::read(&p)
    };
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ok = write(
        "ok.gguf",
        &[
            (
                "w.in_sum2",
                vec![4, 1],
                GgmlType::F32,
                f(&[1.0, 2.0, 3.0, 4.0]),
            ),
            ("w.counts", vec![1, 1], GgmlType::F32, f(&[2.0])),
        ],
    )
    .unwrap();
    assert_eq!(ok.weights_for("w").unwrap(), vec![0.5, 1.0, 1.5, 2.0]);
    assert_eq!(ok.chunk_size, 0);
    assert!(matches!(
        write(
            "unpaired.gguf",
            &[("w.in_sum2", vec![4, 1], GgmlType::F32, f(&[1.0; 4]))]
        ),
        Err(ImatrixError::Unpaired {
            missing: "counts",
            ..
        })
    ));
    assert!(matches!(
        write(
            "only-counts.gguf",
            &[("w.counts", vec![1, 1], GgmlType::F32, f(&[1.0]))]
        ),
        Err(ImatrixError::Unpaired {
            missing: "in_sum2",
            ..
        })
    ));
    assert!(matches!(
        write(
            "f16.gguf",
            &[
                ("w.in_sum2", vec![4, 1], GgmlType::F16, vec![0u8; 8]),
                ("w.counts", vec![1, 1], GgmlType::F32, f(&[1.0])),
            ]
        ),
        Err(ImatrixError::BadTensor { .. })
    ));
    assert!(matches!(
        write(
            "split.gguf",
            &[
                ("w.in_sum2", vec![5, 1], GgmlType::F32, f(&[1.0; 5])),
                ("w.counts", vec![1, 2], GgmlType::F32, f(&[1.0, 1.0])),
            ]
        ),
        Err(ImatrixError::BadTensor { .. })
    ));
    assert!(matches!(
        write(
            "neg.gguf",
            &[
                ("w.in_sum2", vec![2, 1], GgmlType::F32, f(&[1.0, 2.0])),
                ("w.counts", vec![1, 1], GgmlType::F32, f(&[-3.0])),
            ]
        ),
        Err(ImatrixError::BadValue { what: "count", .. })
    ));
    assert!(matches!(
        write("none.gguf", &[("x", vec![1], GgmlType::F32, f(&[1.0]))]),
        Err(ImatrixError::Empty(_))
    ));
}

/// llama.cpp's llama-quantize accepts a GGUF imatrix written by us (oracle check: runs when
/// LLAMA_CPP_BIN names llama.cpp's build/bin and the SmolLM2 fixture is present; says so otherwise).
#[test]
fn llama_quantize_accepts_our_gguf() {
    let Ok(bin) = std::env::var("LLAMA_CPP_BIN") else {
        eprintln!("NOTE: LLAMA_CPP_BIN not set; llama-quantize acceptance not checked");
        return;
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!("NOTE: SmolLM2 fixture missing; llama-quantize acceptance not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.imatrix.gguf");
    Imatrix::read(&data("smollm2_c128x3.imatrix.gguf"))
        .unwrap()
        .write_gguf(&ours, false, 0)
        .unwrap();
    let out = dir.path().join("q.gguf");
    let res = std::process::Command::new(Path::new(&bin).join("llama-quantize"))
        .arg("--allow-requantize")
        .arg("--imatrix")
        .arg(&ours)
        .arg(&model)
        .arg(&out)
        .arg("Q4_K_M")
        .arg("2")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&res.stdout).into_owned() + &String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "llama-quantize failed:\n{log}");
    assert!(
        log.contains("loaded 210 importance matrix entries"),
        "imatrix not used:\n{log}"
    );
}
