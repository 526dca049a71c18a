//! Quantized and mixed K/V caches (issue 17): our perplexity with each `--cache-type-k` /
//! `--cache-type-v` pair against `llama-perplexity -fa on -ctk K -ctv V` on the same file.
//!
//! Oracles: tests/data/llamacpp/avx2/kv_cache/tiny_q8_0_ctk_K_ctv_V.json, made by
//! scripts/llamacpp/kv_cache_oracles.sh with the avx2-class llama.cpp build (flags in
//! tests/data/llamacpp/README.md) on our converter's Q8_0 of fixtures/tiny-natural (its sha256 is
//! recorded and checked here), ctx 512 × 4 chunks of fixtures/cache/text/licenses.txt, 1,020
//! scored tokens. No host computes those runs bit for bit (our AVX2 SwiGLU and matmul tiles keep
//! their own float steps, see tests/common::oracle_class), so every host reads the avx2 files.
//!
//! Tolerance: 1.5 × the largest difference llama.cpp shows against itself on this file
//! (kv_cache/variation.json: each pair again with weight repacking off, `-nr`, and the F16 cache
//! with flash attention off; measured 1.11e-3, so 1.66e-3), never below the 1e-5 the printed
//! decimals resolve — the bound tests/common::ppl_tolerance puts on the F16 cache elsewhere; 3 ×
//! that in our AVX2 class (see `tolerance`). The measured numbers are in BENCHMARKS.md (issue 17).
//!
//! Needs `fixtures/fetch.sh` (the text); without it the test skips with a note, or fails when
//! CI=true.
use longquant::convert::pipeline::{convert, ConvertOptions, TypeChoice};
use longquant::convert::FileType;
use longquant::eval::perplexity::{perplexity, PerplexityOptions};
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, KvType, Model};
use longquant::tokenizer::GgufTokenizer;

mod common;
use common::{fixture, read_json, root};

/// The (K, V) pair of an oracle file name `tiny_q8_0_ctk_K_ctv_V.json`.
fn pair_of(name: &str) -> (KvType, KvType) {
    let rest = name
        .strip_prefix("tiny_q8_0_ctk_")
        .and_then(|r| r.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("{name}: not an oracle name"));
    let (k, v) = rest.split_once("_ctv_").expect("_ctv_ in the name");
    (k.parse().unwrap(), v.parse().unwrap())
}

/// 1.5 × llama.cpp's largest relative difference against itself on this file (any pair, any of
/// the variation runs), at least 1e-5.
fn tolerance(dir: &std::path::Path, sha: &str) -> f64 {
    let var = read_json(&dir.join("variation.json"));
    let mut worst: f64 = 0.0;
    let mut seen = 0;
    for runs in var["runs"].as_object().unwrap().values() {
        for (name, run) in runs.as_object().unwrap() {
            assert_eq!(run["model_sha256"], sha, "{name}: another file");
            let on = read_json(&dir.join(name))["ppl"].as_f64().unwrap();
            let other = run["ppl"].as_f64().unwrap();
            worst = worst.max((other - on).abs() / on);
            seen += 1;
        }
    }
    assert!(seen > 0, "no variation runs");
    // Our AVX2 class (an AVX2-only host, or LONGQUANT_ISA=avx2) runs its own SwiGLU, whose values
    // differ from llama.cpp's AVX2 build by up to 6 ulp (scripts/llamacpp/compare_dump.py); after
    // the 8-bit activation roundings of 16 layers that moves this small model's PPL by up to
    // 3.1e-3 (IQ4_NL) while attention is bit-exact (BENCHMARKS.md, issue 17). That class gets 3 ×
    // the bound (an empirical allowance for the SwiGLU noise, not a llama.cpp measurement).
    let class = if common::oracle_class().dir == "avx2" {
        4.5
    } else {
        1.5
    };
    (class * worst).max(1e-5)
}

#[test]
fn perplexity_per_cache_type_matches_llama_cpp() {
    let Some(text) = fixture("text/licenses.txt") else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let dir = root().join("tests/data/llamacpp/avx2/kv_cache");
    let mut oracles: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tiny_q8_0_ctk_"))
        .collect();
    oracles.sort();
    assert!(oracles.len() >= 3, "kv_cache oracles missing");

    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny-natural.Q8_0.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        ..ConvertOptions::default()
    };
    convert(
        &root().join("fixtures/tiny-natural"),
        &gguf,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let sha = common::sha256_file(&gguf);
    let tol = tolerance(&dir, &sha);
    let file = GgufFile::open(&gguf).unwrap();
    let model = Model::load(&file).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();

    let mut bad = Vec::new();
    for name in &oracles {
        let doc = read_json(&dir.join(name));
        assert_eq!(
            doc["model_sha256"].as_str().unwrap(),
            sha,
            "{name}: not the file llama.cpp ran"
        );
        let (k, v) = pair_of(name);
        let popts = PerplexityOptions {
            n_ctx: 512,
            max_chunks: Some(4),
            eval: EvalOptions {
                cache_type_k: k,
                cache_type_v: v,
            },
        };
        let r = perplexity(&model, &tok, &text, &popts, &mut |_, _, _| {}).unwrap();
        assert_eq!(r.n_tokens_scored, 4 * 255);
        let want = doc["ppl"].as_f64().unwrap();
        let rel = (r.ppl - want).abs() / want;
        eprintln!(
            "-ctk {k} -ctv {v}: ours {:.4}, llama.cpp {want:.4}, relative {rel:.2e}, bound {tol:.2e}",
            r.ppl
        );
        if rel > tol {
            bad.push(format!(
                "-ctk {k} -ctv {v}: {:.4} vs {want:.4} ({rel:.2e})",
                r.ppl
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "beyond {tol:.2e} of llama.cpp: {}",
        bad.join("; ")
    );
}

#[test]
fn bad_cache_type_names_list_the_valid_ones() {
    let e = "q4_k".parse::<KvType>().unwrap_err();
    for t in KvType::ALL {
        assert!(e.contains(t.name()), "{e}");
    }
}

fn longquant(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_longquant"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_forward_command_takes_llama_cpp_cache_flags_and_rejects_bad_names() {
    // clap checks the values before any file is opened, so the paths need not exist.
    let cmds: [&[&str]; 5] = [
        &["perplexity", "m.gguf", "-f", "t.txt"],
        &[
            "compare", "--model", "m.gguf", "--base", "b.gguf", "-f", "t.txt",
        ],
        &["sweep", "src", "-f", "t.txt"],
        &["recall", "m.gguf"],
        &["imatrix", "m.gguf", "-f", "t.txt", "-o", "o.gguf"],
    ];
    for cmd in cmds {
        for flag in ["-ctk", "-ctv", "--cache-type-k", "--cache-type-v"] {
            let mut a = cmd.to_vec();
            a.extend([flag, "q3_k"]);
            let out = longquant(&a);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{a:?} accepted q3_k");
            assert!(
                err.contains("unknown cache type `q3_k`") && err.contains("iq4_nl"),
                "{a:?}: {err}"
            );
        }
    }
}

#[test]
fn perplexity_json_records_the_cache_types() {
    let Some(text) = fixture("text/licenses.txt") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        ..ConvertOptions::default()
    };
    convert(
        &root().join("fixtures/tiny-natural"),
        &gguf,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let out = longquant(&[
        "--json",
        "perplexity",
        gguf.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "--chunks",
        "1",
        "-ctk=q8_0",
        "-ctv",
        "q4_0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["cache_type_k"], "q8_0");
    assert_eq!(doc["cache_type_v"], "q4_0");
    assert_eq!(doc["kv_type"], "mixed");
}
