//! One 8192-token chunk (SmolLM2's whole context) through the forward pass: the scored-token
//! perplexity is finite, agrees with `llama-perplexity -c 8192 --chunks 1`
//! (tests/data/llamacpp/smollm2_ppl_{q8_0,q4_k_m}_ctx8192_c1.json, scripts/llamacpp/perplexity.sh,
//! on the Q8_0 and Q4_K_M files our converter makes; the sha256 is checked) to llama.cpp's printed
//! 4 decimals on a host with its arithmetic (see tests/forward_perplexity.rs; measured 7e-7 and
//! 3e-6) and within the 0.5 % elsewhere, and the process's peak resident memory during
//! the Q8_0 evaluation stays far below the size of one layer's n × n attention score matrix.
//!
//! Its own test binary, so that the peak-memory reading is this evaluation's alone.
//!
//! Needs `fixtures/fetch.sh`; without the fixtures the test skips with a note, or fails when CI=true.
use longquant::eval::perplexity::{perplexity, PerplexityOptions};
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, Model};
use longquant::tokenizer::GgufTokenizer;
use std::path::Path;

mod common;
use common::fixture;

/// `VmHWM` (peak resident set) of this process in bytes, from /proc/self/status.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// Resets the peak-RSS counter to the current RSS (Linux ≥ 4.0: write 5 to clear_refs).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM via /proc/self/clear_refs");
}

/// The oracle file of `tag` at ctx 8192.
fn oracle_name(tag: &str) -> String {
    format!("smollm2_ppl_{tag}_ctx8192_c1.json")
}

/// llama.cpp's PPL for one 8192-token chunk of `tag`'s file, after checking that `path` holds the
/// bytes llama.cpp ran (the oracle records their sha256).
fn oracle_ppl(tag: &str, path: &Path) -> f64 {
    let doc = common::oracle_json(&oracle_name(tag));
    assert_eq!(
        common::sha256_file(path),
        doc["model_sha256"].as_str().unwrap(),
        "{tag}: not the file llama.cpp ran"
    );
    doc["ppl"].as_f64().unwrap()
}

#[test]
fn smollm2_q8_0_ctx8192_matches_llama_perplexity_in_bounded_memory() {
    let Some(text) = fixture("text/licenses.txt") else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(files) = common::smol_converted(dir.path()) else {
        return;
    };
    let path = &files[1];
    let want = oracle_ppl("q8_0", path);

    let file = GgufFile::open(path).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file).unwrap();
    let n_ctx = 8192;
    assert_eq!(model.config.context_length, n_ctx);
    let opts = PerplexityOptions {
        n_ctx,
        max_chunks: Some(1),
        eval: EvalOptions::default(),
    };
    reset_peak_rss();
    let before = peak_rss();
    let r = perplexity(&model, &tok, &text, &opts, &mut |_, _, _| {}).unwrap();
    let peak = peak_rss() - before.min(peak_rss());
    assert_eq!(r.n_tokens_scored, n_ctx - n_ctx / 2 - 1);
    assert!(r.ppl.is_finite() && r.ppl > 1.0, "PPL {}", r.ppl);
    let rel = (r.ppl - want).abs() / want;
    // One layer's attention scores if they were materialised: n_head × n × n f32.
    let n = n_ctx as u64;
    let scores = model.config.n_head as u64 * n * n * 4;
    eprintln!(
        "ctx 8192: PPL {:.4} (llama.cpp {want:.4}, relative {rel:.2e}), {:.1} tokens/s, \
         peak RSS growth {:.0} MiB (model file {:.0} MiB; n² scores of one layer {:.0} MiB)",
        r.ppl,
        r.tokens_per_second,
        peak as f64 / 1048576.0,
        std::fs::metadata(path).unwrap().len() as f64 / 1048576.0,
        scores as f64 / 1048576.0
    );
    let tol = common::ppl_tolerance(&oracle_name("q8_0"));
    assert!(
        rel <= tol,
        "PPL {:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > {tol:.2e}",
        r.ppl
    );
    // The growth includes the model's mapped pages as they are touched, the residual stream and
    // the F16 K/V; it must stay a small fraction of the score matrix the tiling avoids.
    assert!(
        peak < scores / 4,
        "peak RSS grew by {peak} bytes, not far below the {scores}-byte score matrix"
    );
    q4_k_m_ctx8192_matches_llama_perplexity(&text, &files[2]);
}

/// The Q4_K_M file at ctx 8192, run after the Q8_0 evaluation inside the same test (a second
/// `#[test]` would run concurrently and spoil the peak-memory reading).
fn q4_k_m_ctx8192_matches_llama_perplexity(text: &str, path: &Path) {
    let want = oracle_ppl("q4_k_m", path);
    let file = GgufFile::open(path).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file).unwrap();
    let opts = PerplexityOptions {
        n_ctx: 8192,
        max_chunks: Some(1),
        eval: EvalOptions::default(),
    };
    let r = perplexity(&model, &tok, text, &opts, &mut |_, _, _| {}).unwrap();
    let rel = (r.ppl - want).abs() / want;
    eprintln!(
        "ctx 8192 Q4_K_M: PPL {:.4} (llama.cpp {want:.4}, relative {rel:.2e})",
        r.ppl
    );
    let tol = common::ppl_tolerance(&oracle_name("q4_k_m"));
    assert!(
        rel <= tol,
        "PPL {:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > {tol:.2e}",
        r.ppl
    );
}
