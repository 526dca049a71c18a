//! Greedy generation with the K/V-cached session equals recomputing the whole sequence at every
//! step, on the real SmolLM2 model, for a few dozen steps; plus scoring rules.
//! Needs `fixtures/fetch.sh`; without it the model test skips with a note, or fails when CI=true.
mod common;
use common::fixture;
use longquant::chat_template::{ChatMessage, ChatTemplate};
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, Model};
use longquant::recall::generate::{
    generate_greedy, is_correct, is_decided, stop_tokens, Cached, Decoder, Recompute, StopReason,
};
use longquant::tokenizer::GgufTokenizer;

#[test]
fn cached_session_equals_full_recompute() {
    let Some(path) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let tmpl = ChatTemplate::from_metadata(file.metadata()).unwrap();
    let text = tmpl
        .render(
            &[ChatMessage::new(
                "user",
                "Write a short story about a lighthouse keeper.",
            )],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text, false, true).unwrap();
    let stop = stop_tokens(file.metadata(), &tok);
    // SmolLM2's <|im_end|> (eos, id 2) and <|endoftext|> (id 0) end an answer.
    assert!(stop.contains(&2) && stop.contains(&0), "{stop:?}");
    let steps = 32;
    let opts = EvalOptions::default();
    let mut cached = Cached::new(&model, opts);
    let a = generate_greedy(&mut cached, &prompt, steps, &stop, &mut |_| true).unwrap();
    let mut full = Recompute::new(&model, opts);
    let b = generate_greedy(&mut full, &prompt, steps, &stop, &mut |_| true).unwrap();
    assert_eq!(
        a.tokens,
        b.tokens,
        "cached: {:?}\nfull: {:?}",
        tok.decode(&a.tokens),
        tok.decode(&b.tokens)
    );
    assert_eq!(a.stop, b.stop);
    assert_eq!(
        a.tokens.len(),
        steps,
        "a story should not end within {steps} tokens"
    );
    assert_eq!(a.stop, StopReason::Length);
    assert_eq!(cached.len(), prompt.len() + steps - 1);
    assert_eq!(full.len(), prompt.len() + steps - 1);
    // Last logits agree closely too (same kernels; only the attention summation order may differ).
    let la = cached.feed(&[a.tokens[steps - 1]]).unwrap();
    let lb = full.feed(&[b.tokens[steps - 1]]).unwrap();
    let scale = lb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = la
        .iter()
        .zip(&lb)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff <= 1e-3 * scale, "max |Δlogit| {diff} vs scale {scale}");
}

#[test]
fn scoring_is_helmets_substring_match() {
    let v = "e6984080-bab1-4a02-953a-eb70673e29cb";
    assert!(is_correct(" \"e6984080-bab1-4a02-953a-eb70673e29cb\"", v));
    assert!(is_correct(
        "e6984080-bab1-4a02-953a-eb70673e29cb and more",
        v
    ));
    // Restating the key first still counts, as in HELMET's substring_exact_match.
    assert!(is_correct(
        "The value is e6984080-bab1-4a02-953a-eb70673e29cb",
        v
    ));
    assert!(!is_correct("e6984080-bab1", v));
    assert!(!is_correct("e6984081-bab1-4a02-953a-eb70673e29cb", v));
    assert!(!is_correct("", ""));
    // Only a found value settles the verdict early; anything else decodes on.
    assert!(!is_decided(" \"", v));
    assert!(!is_decided(" \"e6984080-ba", v));
    assert!(!is_decided("The", v));
    assert!(is_decided(" \"e6984080-bab1-4a02-953a-eb70673e29cb", v));
}
