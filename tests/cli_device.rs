//! `--device` on the evaluation commands, on a machine without a GPU (CI's): the CPU path is the
//! default and `--device cpu` gives the same numbers; a bad device name is refused by the
//! parser; `--device cuda` is a clear error naming what is missing (a build without the `cuda`
//! feature, or no CUDA driver library), never a panic. The GPU itself is tested by
//! scripts/test-cuda.sh on a CUDA machine.
use std::path::Path;
use std::process::{Command, Output};

fn longquant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longquant"))
        .args(args)
        .output()
        .expect("running the longquant binary")
}

/// tiny-natural (committed) converted to Q8_0 in `dir`.
fn tiny_model(dir: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-natural");
    let out = dir.join("tiny.Q8_0.gguf");
    let o = longquant(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert!(
        o.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_str().unwrap().to_string()
}

fn text(dir: &Path) -> String {
    let p = dir.join("text.txt");
    let words = "the quick brown fox jumps over the lazy dog and then it rests in the warm sun ";
    std::fs::write(&p, words.repeat(60)).unwrap();
    p.to_str().unwrap().to_string()
}

fn ppl_json(args: &[&str]) -> serde_json::Value {
    let o = longquant(args);
    assert!(
        o.status.success(),
        "perplexity: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("--json prints one JSON document")
}

#[test]
fn cpu_is_the_default_and_bad_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path());
    let t = text(dir.path());
    let base = [
        "perplexity",
        m.as_str(),
        "-f",
        t.as_str(),
        "--ctx",
        "128",
        "--chunks",
        "2",
        "--json",
    ];
    let default = ppl_json(&base);
    let mut with_cpu = base.to_vec();
    with_cpu.extend(["--device", "cpu"]);
    let cpu = ppl_json(&with_cpu);
    assert_eq!(default["ppl"], cpu["ppl"]);
    assert_eq!(default["device"], "cpu");
    assert!(default["ppl"].as_f64().unwrap() > 1.0);

    // A name that is no device: refused by the argument parser (exit 2), naming the forms.
    let mut bogus = base.to_vec();
    bogus.extend(["--device", "gpu0"]);
    let o = longquant(&bogus);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cpu, cuda or cuda:N"), "{err}");

    // cuda on this machine: without the feature, the error says how to build with it; with the
    // feature but no GPU driver, it names the missing library. Either way no panic, exit 2,
    // and the model's path is in the message.
    for cmd in ["perplexity", "imatrix", "logits"] {
        let out = dir.path().join("im.gguf");
        let args: Vec<&str> = match cmd {
            "perplexity" => vec![cmd, &m, "-f", &t, "--ctx", "128", "--device", "cuda"],
            "imatrix" => vec![
                cmd,
                &m,
                "-f",
                &t,
                "-o",
                out.to_str().unwrap(),
                "--ctx",
                "128",
                "--device",
                "cuda:1",
            ],
            _ => vec![cmd, &m, "--tokens", "1,2,3", "--device", "cuda"],
        };
        let o = longquant(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        assert!(
            err.contains(&m),
            "{cmd}: the message names the model: {err}"
        );
        if cfg!(feature = "cuda") {
            assert!(
                err.contains("CUDA library") || err.contains("no CUDA device"),
                "{cmd}: {err}"
            );
        } else {
            assert!(err.contains("built without CUDA support"), "{cmd}: {err}");
            assert!(err.contains("--features cuda"), "{cmd}: {err}");
        }
        assert!(!out.exists(), "{cmd}: nothing written");
    }

    let o = longquant(&["devices", "--json"]);
    if cfg!(feature = "cuda") {
        assert!(!o.status.success());
    } else {
        assert!(o.status.success());
        let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(d["cuda"], false);
    }
}
