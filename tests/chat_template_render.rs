//! Chat templates rendered in the minijinja sandbox.
//!
//! Expected strings were written by hand from each template's semantics as `transformers`'
//! `apply_chat_template` runs it (jinja2 sandbox with trim_blocks, lstrip_blocks, loopcontrols;
//! `tojson` = `json.dumps(ensure_ascii=False)`), and double-checked once with Python jinja2 3.1.6
//! configured the same way. Hostile templates must fail with a typed error, never panic or hang.
//!
//! Needs `fixtures/fetch.sh` (SmolLM2 GGUF, Llama-3 tokenizer_config.json); without it the fixture
//! tests skip with a note, or fail when CI=true.
mod common;
use common::fixture;
use longquant::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, Limits};
use longquant::formats::gguf::GgufFile;

use std::time::{Duration, Instant};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  Be brief. "),
        ChatMessage::new("user", "Hi\n"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Key: \"x\""),
    ]
}

fn llama3() -> Option<ChatTemplate> {
    let p = fixture("llama3-tokenizer/tokenizer_config.json")?;
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    Some(ChatTemplate::new(
        cfg["chat_template"].as_str().unwrap(),
        cfg["bos_token"].as_str().unwrap(),
        cfg["eos_token"].as_str().unwrap(),
    ))
}

#[test]
fn llama3_template_matches_hf() {
    let Some(t) = llama3() else { return };
    assert_eq!(t.bos_token(), "<|begin_of_text|>");
    let one = [ChatMessage::new("user", "Hello")];
    let expect_one = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    // This template appends the assistant header whatever add_generation_prompt says.
    assert_eq!(t.render(&one, true).unwrap(), expect_one);
    assert_eq!(t.render(&one, false).unwrap(), expect_one);
    let expect =
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
<|start_header_id|>user<|end_header_id|>\n\nKey: \"x\"<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(t.render(&conversation(), true).unwrap(), expect);
}

#[test]
fn chatml_template_from_smollm2_gguf_matches_hf() {
    let Some(p) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&p).unwrap();
    let t = ChatTemplate::from_metadata(file.metadata()).expect("SmolLM2 has a chat template");
    assert_eq!(t.bos_token(), "<|im_start|>");
    let one = [ChatMessage::new("user", "Hello")];
    let sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        t.render(&one, true).unwrap(),
        format!("{sys}<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        t.render(&one, false).unwrap(),
        format!("{sys}<|im_start|>user\nHello<|im_end|>\n")
    );
    assert_eq!(
        t.render(&conversation(), true).unwrap(),
        "<|im_start|>system\n  Be brief. <|im_end|>\n<|im_start|>user\nHi\n<|im_end|>\n\
<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nKey: \"x\"<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn helper_functions_and_filters() {
    let t = ChatTemplate::new(
        "{{ strftime_now('%d %b %Y') }}|{{ messages[0].content.strip() }}|{{ messages[0].content.startswith(' a') }}|{{ {'a': [1, 'é<\n'], 'b': none, 'c': true}|tojson }}|{{ [1]|tojson(indent=2) }}|{{ bos_token }}{{ eos_token }}",
        "<s>",
        "</s>",
    );
    let out = t
        .render(&[ChatMessage::new("user", " a b ")], false)
        .unwrap();
    assert_eq!(
        out,
        "26 Jul 2024|a b|True|{\"a\": [1, \"é<\\n\"], \"b\": null, \"c\": true}|[\n  1\n]|<s></s>"
    );
    let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "");
    match t.render(&[], true) {
        Err(ChatTemplateError::Raised(m)) => assert_eq!(m, "no system role"),
        other => panic!("expected Raised, got {other:?}"),
    }
}

/// Renders `src` under small limits and checks it fails quickly with the expected error.
fn hostile(src: &str) -> ChatTemplateError {
    let t = ChatTemplate::new(src, "<s>", "</s>");
    let start = Instant::now();
    let msgs = [ChatMessage::new("user", "hello")];
    let res = t.render_with_limits(msgs.as_slice(), true, Limits::for_messages(&msgs));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{src} took {:?}",
        start.elapsed()
    );
    res.expect_err(src)
}

#[test]
fn endless_loop_runs_out_of_fuel() {
    for src in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    ] {
        let e = hostile(src);
        assert!(matches!(e, ChatTemplateError::OutOfFuel { .. }), "{src}: {e:?}");
    }
}

#[test]
fn huge_output_hits_the_size_limit() {
    // Each iteration is cheap in fuel but writes 1 KiB: the output cap must stop it first.
    let src = format!(
        "{{% for i in range(1000) %}}{}{{% endfor %}}",
        "y".repeat(1024)
    );
    let e = hostile(&src);
    assert!(
        matches!(e, ChatTemplateError::OutputTooLarge { limit } if limit == 64 * 1024 + 4 * 9),
        "{e:?}"
    );
}

#[test]
fn unknown_functions_and_bad_syntax_are_errors() {
    for src in [
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ open('/etc/passwd') }}",
        "{{ messages|shell }}",
        "{{ messages[0].content.format_map({}) }}",
    ] {
        let e = hostile(src);
        assert!(
            matches!(
                e,
                ChatTemplateError::Unsupported(_) | ChatTemplateError::Render(_)
            ),
            "{src}: {e:?}"
        );
    }
    // No loader and no multi-template support: include/import do not even parse.
    for src in [
        "{% for %}",
        "{% include 'other.j2' %}",
        "{% import 'x' as y %}",
    ] {
        assert!(
            matches!(hostile(src), ChatTemplateError::Syntax(_)),
            "{src}"
        );
    }
    // Deep macro recursion stops at the recursion limit.
    let e = hostile("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(
        matches!(
            e,
            ChatTemplateError::Render(_) | ChatTemplateError::OutOfFuel { .. }
        ),
        "{e:?}"
    );
}

#[test]
fn long_messages_fit_the_default_limits() {
    // A 64K-token recall prompt is ~300 KB of JSON; the scaled limits must let a normal template
    // through.
    let Some(t) = llama3() else { return };
    let big = "x".repeat(400_000);
    let out = t
        .render(&[ChatMessage::new("user", big.as_str())], true)
        .unwrap();
    let small = t
        .render(&[ChatMessage::new("user", "Hello")], true)
        .unwrap();
    assert_eq!(out, small.replace("Hello", &big));
}
