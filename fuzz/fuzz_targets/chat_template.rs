//! Hostile chat templates and messages: rendering returns text within the output limit or a
//! typed error (fuel, recursion, syntax), never a panic or a hang. Input: template, then
//! messages, separated by NUL bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant::chat_template::{ChatMessage, ChatTemplate, Limits};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let roles = ["system", "user", "assistant"];
    let messages: Vec<ChatMessage> = parts
        .enumerate()
        .map(|(i, c)| ChatMessage::new(roles[i % 3], c))
        .collect();
    let t = ChatTemplate::new(source, "<s>", "</s>");
    let limits = Limits::for_messages(&messages);
    if let Ok(out) = t.render(&messages, true) {
        assert!(out.len() <= limits.max_output);
    }
});
