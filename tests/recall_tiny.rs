//! Recall that ranks: on tiny-recall (committed, `fixtures/tiny-recall/`, a 28M-parameter Llama
//! trained to do HELMET's JSON key-value retrieval; see its PROVENANCE.md), our F32 conversion
//! retrieves at 1K and 4K tokens, and a conversion with a wrong rope theta is caught twice: the
//! facts check against the HF folder names the rope theta, and recall collapses.
//! Measured on this project's 2-core host (session 5): F32 scores 1.00 in every cell of
//! `--lengths 1024,4096 --depths 0,0.5,1 --samples 2`; with `llama.rope.freq_base` overridden to
//! 10000 (ProLong's is 8e6) it scores 0.00 at 4096 tokens. About 2 minutes in release.
mod common;
use common::{require, root};
use std::path::Path;
use std::process::{Command, Output};

fn longquant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longquant"))
        .args(args)
        .output()
        .expect("running the longquant binary")
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Mean accuracy per length of a `recall --json` document.
fn by_length(doc: &serde_json::Value) -> Vec<(u64, f64)> {
    let mut out: Vec<(u64, f64, usize)> = Vec::new();
    for c in doc["cells"].as_array().expect("cells") {
        let (len, acc) = (
            c["length"].as_u64().unwrap(),
            c["accuracy"].as_f64().unwrap(),
        );
        match out.iter_mut().find(|(l, _, _)| *l == len) {
            Some(e) => {
                e.1 += acc;
                e.2 += 1;
            }
            None => out.push((len, acc, 1)),
        }
    }
    out.into_iter().map(|(l, s, n)| (l, s / n as f64)).collect()
}

fn recall(model: &Path, lengths: &str, depths: &str) -> serde_json::Value {
    let o = ok(
        longquant(&[
            "recall",
            model.to_str().unwrap(),
            "--lengths",
            lengths,
            "--depths",
            depths,
            "--samples",
            "1",
            "--seed",
            "1",
            "--json",
        ]),
        "recall",
    );
    serde_json::from_slice(&o.stdout).expect("--json prints one JSON document")
}

#[test]
fn tiny_recall_retrieves_and_a_wrong_rope_theta_is_caught() {
    let Some(src) = require(root().join("fixtures/tiny-recall/model.safetensors")) else {
        return;
    };
    let src = src.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("tiny-recall.F32.gguf");
    ok(
        longquant(&[
            "convert",
            src.to_str().unwrap(),
            "-o",
            f32.to_str().unwrap(),
            "--type",
            "F32",
        ]),
        "convert",
    );

    let doc = recall(&f32, "1024,4096", "0,0.5,1");
    eprintln!("F32: {}", doc["cells"]);
    let lengths = by_length(&doc);
    assert_eq!(
        lengths.iter().map(|l| l.0).collect::<Vec<_>>(),
        [1024, 4096]
    );
    for (len, acc) in &lengths {
        assert!(
            *acc >= 0.9,
            "F32 recall at {len} tokens is {acc} (expected >= 0.9)"
        );
    }

    // The same weights with the rope theta of an ordinary Llama (a conversion that lost
    // ProLong's 8e6).
    let bad = dir.path().join("tiny-recall.bad-theta.gguf");
    ok(
        longquant(&[
            "quantize",
            f32.to_str().unwrap(),
            bad.to_str().unwrap(),
            "--type",
            "F32",
            "--allow-requantize",
            "--override-kv",
            "llama.rope.freq_base=float:10000",
        ]),
        "quantize --override-kv",
    );
    let o = longquant(&[
        "inspect",
        bad.to_str().unwrap(),
        "--check-against",
        src.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "the facts check accepted a wrong rope theta"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rope theta"), "{err}");

    let doc = recall(&bad, "4096", "0,1");
    eprintln!("wrong theta: {}", doc["cells"]);
    let acc = doc["accuracy"].as_f64().unwrap();
    assert!(
        acc <= 0.5,
        "recall with a wrong rope theta should collapse, got {acc}"
    );
}
