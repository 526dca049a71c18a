//! `longquant recall` end to end on the real SmolLM2 model at 1K and 4K tokens: completes, one cell per
//! length × depth with accuracies in [0, 1], the JSON fields, and a well-formed SVG heat map.
//! Two depths at each length, one sample per cell (about 95 s in release on 2 cores). Needs
//! `fixtures/fetch.sh` (skips without it unless CI=true).
mod common;
use common::fixture;

use std::process::Command;

/// Checks that `s` is well-formed XML as far as tags go: every element closes in order,
/// attributes are quoted, and there is exactly one root.
fn check_xml(s: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        assert!(!rest[..i].contains('>'), "stray '>'");
        let end = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..end];
        rest = &rest[end + 1..];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if tag.ends_with('/') {
            if stack.is_empty() {
                roots += 1;
            }
        } else {
            let name = tag.split_whitespace().next().unwrap().to_string();
            if stack.is_empty() {
                roots += 1;
            }
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(roots, 1);
    assert!(!rest.contains('>'));
}

#[test]
fn recall_run_at_1k_and_4k_reports_cells_json_and_svg() {
    let Some(model) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("recall.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_longquant"))
        .arg("recall")
        .arg(&model)
        .args([
            "--lengths",
            "1024,4096",
            "--depths",
            "0,1",
            "--samples",
            "1",
            "--seed",
            "3",
        ])
        .args(["--json", "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cells = doc["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    let expected = [(1024, 0.0), (1024, 1.0), (4096, 0.0), (4096, 1.0)];
    for (c, (length, depth)) in cells.iter().zip(expected) {
        assert_eq!(c["length"], length);
        assert_eq!(c["depth"].as_f64(), Some(depth));
        assert_eq!(c["samples"], 1);
        let acc = c["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(c.get("base_accuracy").is_some() && c["base_accuracy"].is_null());
        assert!(c.get("agreement").is_some() && c["agreement"].is_null());
    }
    let acc = doc["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(doc["prompt_tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(doc["decode_tokens_per_second"].as_f64().is_some());
    eprintln!("{}", serde_json::to_string(&doc).unwrap());
    let svg = std::fs::read_to_string(&svg).unwrap();
    check_xml(&svg);
    assert_eq!(svg.matches("<rect").count(), 4);

    // Lengths above the model's context (8192) are refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_longquant"))
        .arg("recall")
        .arg(&model)
        .args(["--lengths", "16384"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exceeds the model's context length 8192"),
        "{err}"
    );
}
