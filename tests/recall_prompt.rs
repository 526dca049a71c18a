//! JSON key-value prompts on the real SmolLM2 tokenizer and ChatML template: token counts within
//! one pair of the target, the queried key exactly once at the requested depth, determinism.
//! Needs `fixtures/fetch.sh`; without it the tests skip with a note, or fail when CI=true.
mod common;
use common::fixture;
use longquant::chat_template::ChatTemplate;
use longquant::formats::gguf::GgufFile;
use longquant::recall::prompt::{
    build_kv_prompt, depth_index, render_kv_prompt, PromptError, PromptFormat, SplitMix64,
};
use longquant::tokenizer::GgufTokenizer;

fn smol() -> Option<(GgufTokenizer, ChatTemplate)> {
    let f = GgufFile::open(fixture("SmolLM2-135M-Instruct.Q4_1.gguf")?).unwrap();
    Some((
        GgufTokenizer::from_gguf(&f).unwrap(),
        ChatTemplate::from_metadata(f.metadata()).unwrap(),
    ))
}

#[test]
fn uuids_are_v4_and_seeded() {
    let mut g = SplitMix64::new(1);
    for _ in 0..100 {
        let u = g.uuid_v4();
        let b = u.as_bytes();
        assert_eq!(u.len(), 36);
        assert_eq!((b[8], b[13], b[18], b[23]), (b'-', b'-', b'-', b'-'));
        assert_eq!(b[14], b'4', "{u}");
        assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{u}");
        assert!(u
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
    assert_eq!(SplitMix64::new(5).uuid_v4(), SplitMix64::new(5).uuid_v4());
    assert_ne!(SplitMix64::new(5).uuid_v4(), SplitMix64::new(6).uuid_v4());
}

#[test]
fn token_count_within_one_pair_and_key_at_depth() {
    let Some((tok, tmpl)) = smol() else { return };
    for format in [PromptFormat::Chat(tmpl), PromptFormat::Plain] {
        for (target, depth) in [
            (1024usize, 0.0),
            (1024, 1.0),
            (2048, 0.5),
            (4096, 0.25),
            (700, 0.75),
        ] {
            let p = build_kv_prompt(&tok, &format, target, depth, 42).unwrap();
            // Tolerance: the prompt fits, and one more pair would not.
            assert!(p.tokens.len() <= target, "{} > {target}", p.tokens.len());
            let more = render_kv_prompt(
                &tok,
                &format,
                42,
                p.n_pairs + 1,
                depth_index(depth, p.n_pairs + 1),
            )
            .unwrap();
            assert!(
                more.tokens.len() > target,
                "{} pairs would still fit",
                p.n_pairs + 1
            );
            assert!(target - p.tokens.len() < more.tokens.len() - p.tokens.len());
            // Exact token count: re-tokenizing the text gives the same ids.
            match &format {
                PromptFormat::Chat(_) => {
                    assert_eq!(tok.encode(&p.text, false, true).unwrap(), p.tokens)
                }
                PromptFormat::Plain => {
                    assert_eq!(tok.encode(&p.text, true, false).unwrap(), p.tokens)
                }
            }
            // The key occurs exactly twice: once in the object, once in the question.
            assert_eq!(p.text.matches(&p.key).count(), 2, "key repeated");
            assert_eq!(p.text.matches(&p.value).count(), 1, "value repeated");
            // ... and in the object it is pair number target_index.
            assert_eq!(p.target_index, depth_index(depth, p.n_pairs));
            let obj_start = p.text.find('{').unwrap();
            let obj_end = p.text.rfind('}').unwrap();
            let obj = &p.text[obj_start + 1..obj_end];
            let pairs: Vec<&str> = obj.split(", ").collect();
            assert_eq!(pairs.len(), p.n_pairs);
            assert_eq!(
                pairs[p.target_index],
                format!("\"{}\": \"{}\"", p.key, p.value)
            );
            if depth == 0.0 {
                assert_eq!(p.target_index, 0);
            }
            if depth == 1.0 {
                assert_eq!(p.target_index, p.n_pairs - 1);
            }
            // The question names the key once; the answer prefix opens the model's turn, as in
            // HELMET (after the chat template's generation prompt, or at the end of a plain prompt).
            assert_eq!(p.text.matches(&format!("Key: \"{}\"", p.key)).count(), 1);
            assert!(
                p.text.ends_with("Corresponding value:"),
                "{}",
                &p.text[p.text.len().saturating_sub(80)..]
            );
        }
    }
}

#[test]
fn deterministic_by_seed() {
    let Some((tok, tmpl)) = smol() else { return };
    let f = PromptFormat::Chat(tmpl);
    let a = build_kv_prompt(&tok, &f, 1024, 0.5, 7).unwrap();
    let b = build_kv_prompt(&tok, &f, 1024, 0.5, 7).unwrap();
    let c = build_kv_prompt(&tok, &f, 1024, 0.5, 8).unwrap();
    assert_eq!(a.text, b.text);
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.text, c.text);
    assert_ne!(a.key, c.key);
}

#[test]
fn bad_requests_are_errors() {
    let Some((tok, tmpl)) = smol() else { return };
    let f = PromptFormat::Chat(tmpl);
    assert!(matches!(
        build_kv_prompt(&tok, &f, 1024, 1.5, 1),
        Err(PromptError::BadDepth(_))
    ));
    assert!(matches!(
        build_kv_prompt(&tok, &f, 1024, f64::NAN, 1),
        Err(PromptError::BadDepth(_))
    ));
    assert!(matches!(
        build_kv_prompt(&tok, &f, 50, 0.0, 1),
        Err(PromptError::TooShort { .. })
    ));
}
