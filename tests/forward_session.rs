//! Incremental decoding: a [`Session`] fed a prompt and then one token at a time gives the
//! logits of evaluating the whole sequence from scratch at every step, on the real SmolLM2.
//!
//! Every kernel works row by row (activation quantization, dot products, RMSNorm) and attention
//! visits keys in the same blocks whatever the query batch, so the two paths are bit-identical
//! and the test demands exact equality.
//!
//! Needs `fixtures/fetch.sh`; without the fixture the test skips with a note, or fails when CI=true.
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, Model, ModelError, SessionOptions};
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cache")
        .join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
    {
        panic!("fixture {} missing (run fixtures/fetch.sh)", p.display());
    }
    eprintln!(
        "SKIP: fixture {} missing; run fixtures/fetch.sh",
        p.display()
    );
    None
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn greedy_decoding_with_cache_equals_full_recompute() {
    let Some(gguf) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let model = Model::load(&file).unwrap();
    // "The quick brown fox" style prompt as raw ids of the SmolLM2 vocabulary (any ids work).
    let prompt: Vec<u32> = vec![
        504, 2365, 6354, 16438, 253, 13589, 690, 260, 23790, 2767, 30,
    ];
    let mut session = model.session(SessionOptions::default());
    assert!(session.is_empty());

    let mut last = Vec::new();
    session
        .feed(&prompt, &mut |pos, l| {
            assert_eq!(pos, prompt.len() - 1);
            last = l.to_vec();
        })
        .unwrap();
    let mut seq = prompt.clone();
    let steps = 40;
    for step in 0..steps {
        // The full recompute of `seq`: logits of its last position.
        let mut full = Vec::new();
        model
            .eval(
                &seq,
                seq.len() - 1,
                &EvalOptions::default(),
                &mut |pos, l| {
                    assert_eq!(pos, seq.len() - 1);
                    full = l.to_vec();
                },
            )
            .unwrap();
        assert_eq!(full.len(), last.len());
        let worst = full
            .iter()
            .zip(&last)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert_eq!(worst, 0.0, "step {step}: cached logits differ by {worst}");
        let next = argmax(&last);
        seq.push(next);
        session
            .feed(&[next], &mut |pos, l| {
                assert_eq!(pos, seq.len() - 1);
                last = l.to_vec();
            })
            .unwrap();
        assert_eq!(session.len(), seq.len());
    }
    // The greedy continuation is not degenerate (the model is real, not random).
    let distinct: std::collections::HashSet<_> = seq[prompt.len()..].iter().collect();
    assert!(
        distinct.len() > 3,
        "continuation {:?}",
        &seq[prompt.len()..]
    );
}

#[test]
fn session_refuses_bad_input_and_stays_unchanged() {
    let Some(gguf) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let model = Model::load(&file).unwrap();
    let mut s = model.session(SessionOptions::default());
    let mut sink = |_: usize, _: &[f32]| {};
    s.feed(&[1, 2, 3], &mut sink).unwrap();
    assert!(matches!(
        s.feed(&[], &mut sink),
        Err(ModelError::EmptyInput)
    ));
    assert!(matches!(
        s.feed(&[5, 49152], &mut sink),
        Err(ModelError::TokenOutOfRange {
            id: 49152,
            pos: 4,
            ..
        })
    ));
    assert!(matches!(
        s.feed(&vec![1u32; 8190], &mut sink),
        Err(ModelError::ContextTooLong {
            requested: 8193,
            max: 8192
        })
    ));
    assert_eq!(s.len(), 3);
    // Logits for every new position when asked.
    let mut seen = Vec::new();
    s.feed_logits_from(&[7, 8, 9], 3, &mut |pos, _| seen.push(pos))
        .unwrap();
    assert_eq!(seen, vec![3, 4, 5]);
    assert_eq!(s.len(), 6);
}
