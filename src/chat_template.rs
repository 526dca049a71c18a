//! Rendering a model's chat template (`tokenizer.chat_template`) safely.
//!
//! The template is Jinja source taken from the model file, i.e. from whoever published the model.
//! Rendering it with a general-purpose engine that can reach host objects was a remote-code-execution
//! hole in llama-cpp-python, so it is rendered here with `minijinja` configured as a sandbox:
//!
//! - no loader (no `include`/`import` of files) and no globals beyond the few functions Hugging
//!   Face templates call (`raise_exception`, `strftime_now` with a fixed date, `range`, ...);
//! - a fuel budget (bounds instructions executed and memory allocated, so `{% for i in range(…) %}`
//!   loops and runaway string building stop with [`ChatTemplateError::OutOfFuel`]);
//! - an output-size cap checked on every write ([`ChatTemplateError::OutputTooLarge`]);
//! - a recursion limit (macros calling themselves).
//!
//! The environment mirrors what `transformers`' `apply_chat_template` uses: `trim_blocks` and
//! `lstrip_blocks` on, the `loopcontrols` extension, lenient undefined values, and the variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
use longquant_formats::gguf::{Metadata, Value as GgufValue};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value};
use std::collections::BTreeMap;
use std::io;

/// Why a chat template could not be rendered. Every failure of an untrusted template lands here;
/// rendering never panics.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template does not parse.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template used up its fuel budget (an endless or very long loop, or huge values).
    #[error("chat template exceeded its execution budget of {fuel} fuel units")]
    OutOfFuel {
        /// The budget it was given.
        fuel: u64,
    },
    /// The rendered text grew past the size limit.
    #[error("chat template output exceeded {limit} bytes")]
    OutputTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The template called a function, filter, test or method that the sandbox does not offer.
    #[error("chat template uses something the sandbox does not provide: {0}")]
    Unsupported(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Any other rendering failure (type errors, recursion limit, bad arguments).
    #[error("chat template rendering failed: {0}")]
    Render(String),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Resource limits for one render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// minijinja fuel (roughly one unit per instruction, plus one per ~64 bytes allocated).
    pub fuel: u64,
    /// Maximum output size in bytes.
    pub max_output: usize,
    /// Maximum recursion depth (minijinja caps this at 500 anyway).
    pub recursion: usize,
}

impl Limits {
    /// Limits scaled to the input: output at most 4× the messages' size plus 64 KiB; fuel a fixed
    /// 2 M units plus one unit per 8 bytes of messages for every time a template may copy them.
    pub fn for_messages(messages: &[ChatMessage]) -> Self {
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        Self {
            fuel: 2_000_000 + (bytes as u64 / 8).saturating_mul(4),
            max_output: bytes.saturating_mul(4).saturating_add(64 << 10),
            recursion: 64,
        }
    }
}

/// A chat template plus the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// Marks an error raised by the template itself through `raise_exception`.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// Marks a write refused because the output cap was reached.
#[derive(Debug)]
struct CapReached;

impl std::fmt::Display for CapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("output size limit reached")
    }
}

impl std::error::Error for CapReached {}

/// An `io::Write` that refuses to grow past `limit` bytes.
struct CappedBuf<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
}

impl io::Write for CappedBuf<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(io::Error::other(CapReached));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The fixed "today" that `strftime_now` reports, so renders are reproducible:
/// (year, month 1-12, day, weekday name index 0 = Monday).
const FIXED_DATE: (i32, usize, u32, usize) = (2024, 7, 26, 4);
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `strftime_now(format)`: formats the fixed date (midnight) with the common C specifiers.
fn strftime_now(format: &str) -> Result<Value, minijinja::Error> {
    let (year, month, day, wd) = FIXED_DATE;
    let month_name = MONTHS.get(month - 1).copied().unwrap_or("");
    let day_name = DAYS.get(wd).copied().unwrap_or("");
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                out.push_str(&day.to_string());
            }
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(month_name.get(..3).unwrap_or(month_name)),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(day_name.get(..3).unwrap_or(day_name)),
            Some('A') => out.push_str(day_name),
            Some('H') | Some('M') | Some('S') => out.push_str("00"),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported specifier %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(Value::from(out))
}

/// Python string/dict methods that HF templates call (`.strip()`, `.startswith(...)`,
/// `.items()`, ...), implemented here instead of pulling in minijinja-contrib.
fn py_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let unknown = || {
        minijinja::Error::new(
            ErrorKind::UnknownMethod,
            format!("{} has no method named {method}", value.kind()),
        )
    };
    let arg_str = |i: usize| -> Result<Option<&str>, minijinja::Error> {
        match args.get(i) {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{method}: argument {i} must be a string"),
                )
            }),
        }
    };
    if let Some(s) = value.as_str() {
        let chars: Option<Vec<char>> = arg_str(0)?.map(|c| c.chars().collect());
        let strip_set = |c: char| match &chars {
            Some(set) => set.contains(&c),
            None => c.is_whitespace(),
        };
        return match method {
            "strip" => Ok(Value::from(s.trim_matches(strip_set))),
            "lstrip" => Ok(Value::from(s.trim_start_matches(strip_set))),
            "rstrip" => Ok(Value::from(s.trim_end_matches(strip_set))),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "upper" => Ok(Value::from(s.to_uppercase())),
            "startswith" => Ok(Value::from(s.starts_with(arg_str(0)?.unwrap_or("")))),
            "endswith" => Ok(Value::from(s.ends_with(arg_str(0)?.unwrap_or("")))),
            "replace" => {
                let (from, to) = (arg_str(0)?.unwrap_or(""), arg_str(1)?.unwrap_or(""));
                let out = s.replace(from, to);
                state.consume_fuel(out.len() as u64 / 64)?;
                Ok(Value::from(out))
            }
            "split" => {
                let parts: Vec<Value> = match arg_str(0)? {
                    Some(sep) if !sep.is_empty() => s.split(sep).map(Value::from).collect(),
                    Some(_) => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "split: empty separator",
                        ))
                    }
                    None => s.split_whitespace().map(Value::from).collect(),
                };
                state.consume_fuel(parts.len() as u64)?;
                Ok(Value::from(parts))
            }
            _ => Err(unknown()),
        };
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut out = Vec::new();
                for k in value.try_iter()? {
                    out.push(value.get_item(&k)?);
                }
                Ok(Value::from(out))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}

/// Nesting depth past which `tojson` gives up (a template cannot build cycles, but values can be
/// deep).
const JSON_MAX_DEPTH: usize = 64;

/// `tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False)` with Python
/// `json.dumps` output: `", "`/`": "` separators (`","` and `": "` when indenting), non-ASCII
/// kept as is.
fn tojson(
    state: &State,
    value: Value,
    indent: Option<Value>,
    kw: Kwargs,
) -> Result<Value, minijinja::Error> {
    let bad =
        |what: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {what}"));
    let indent = match indent {
        Some(i) => Some(i),
        None => kw.get::<Option<Value>>("indent")?,
    };
    let indent: Option<usize> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(
            usize::try_from(v)
                .map_err(|_| bad("indent must be an integer"))?
                .min(16),
        ),
    };
    let sort_keys: bool = kw.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _: Option<bool> = kw.get("ensure_ascii")?;
    let (item_sep, key_sep) = match kw.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let a = v.get_item(&Value::from(0))?;
            let b = v.get_item(&Value::from(1))?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => return Err(bad("separators must be two strings")),
            }
        }
        _ => (
            if indent.is_some() {
                ",".into()
            } else {
                ", ".into()
            },
            ": ".to_string(),
        ),
    };
    kw.assert_all_used()?;
    let mut out = String::new();
    json_write(&value, indent, &item_sep, &key_sep, sort_keys, 0, &mut out)?;
    state.consume_fuel(out.len() as u64 / 64)?;
    Ok(Value::from(out))
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_write(
    v: &Value,
    indent: Option<usize>,
    item_sep: &str,
    key_sep: &str,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    if depth > JSON_MAX_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => json_string(v.as_str().unwrap_or(""), out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                json_string(&k.to_string(), out);
                out.push_str(key_sep);
                json_write(
                    &v.get_item(k)?,
                    indent,
                    item_sep,
                    key_sep,
                    sort_keys,
                    depth + 1,
                    out,
                )?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                json_write(item, indent, item_sep, key_sep, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {}", v.kind()),
            ))
        }
    }
    Ok(())
}

fn metadata_token(md: &Metadata, id_key: &str) -> Option<String> {
    let id = md.get(id_key).and_then(GgufValue::as_u64)?;
    let tokens = md
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)?;
    let tok = tokens.values.get(usize::try_from(id).ok()?)?.as_str()?;
    Some(tok.to_string())
}

impl ChatTemplate {
    /// A template with the given Jinja source and special-token strings.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        }
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with `bos_token`/`eos_token` taken
    /// from the token list; `None` when the file has no template (a base model: use plain prompts).
    pub fn from_metadata(md: &Metadata) -> Option<Self> {
        let source = md
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)?;
        Some(Self::new(
            source,
            metadata_token(md, "tokenizer.ggml.bos_token_id").unwrap_or_default(),
            metadata_token(md, "tokenizer.ggml.eos_token_id").unwrap_or_default(),
        ))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS token's text as the template sees it.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Renders `messages` with limits scaled to their size ([`Limits::for_messages`]).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_limits(
            messages,
            add_generation_prompt,
            Limits::for_messages(messages),
        )
    }

    /// Renders `messages` under explicit limits.
    pub fn render_with_limits(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        limits: Limits,
    ) -> Result<String, ChatTemplateError> {
        let mut env = Environment::new();
        // Environment::new() brings minijinja's default filters and tests (pure functions on
        // values) and the globals `range`, `dict`, `namespace`; there is no loader, so
        // include/import/extends cannot reach anything. Remove `debug`-style globals anyway.
        env.remove_global("debug");
        env.set_fuel(Some(limits.fuel));
        env.set_recursion_limit(limits.recursion);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        // transformers compiles chat templates with trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(
                    minijinja::Error::new(ErrorKind::InvalidOperation, "raise_exception")
                        .with_source(RaisedByTemplate(msg)),
                )
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        // transformers' `tojson` is `json.dumps(x, ensure_ascii=False, indent=..., separators=...,
        // sort_keys=...)`; minijinja's built-in one escapes HTML characters, so use our own.
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(py_method);

        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;

        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut o = BTreeMap::new();
                o.insert("role".to_string(), Value::from(m.role.as_str()));
                o.insert("content".to_string(), Value::from(m.content.as_str()));
                Value::from(o)
            })
            .collect();
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from(msgs));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));

        let mut out = Vec::new();
        let res = tmpl.render_captured_to(
            Value::from(ctx),
            CappedBuf {
                buf: &mut out,
                limit: limits.max_output,
            },
        );
        if let Err(e) = res {
            return Err(classify(&e, &limits));
        }
        String::from_utf8(out).map_err(|e| ChatTemplateError::Render(e.to_string()))
    }
}

/// The error's text with its detail and line.
fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(l) => format!("{e} (line {l})"),
        None => e.to_string(),
    }
}

fn classify(e: &minijinja::Error, limits: &Limits) -> ChatTemplateError {
    // Walk the source chain for our own markers first.
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RaisedByTemplate>() {
            return ChatTemplateError::Raised(r.0.clone());
        }
        if s.downcast_ref::<CapReached>().is_some() {
            return ChatTemplateError::OutputTooLarge {
                limit: limits.max_output,
            };
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<CapReached>().is_some())
            {
                return ChatTemplateError::OutputTooLarge {
                    limit: limits.max_output,
                };
            }
        }
        src = s.source();
    }
    match e.kind() {
        ErrorKind::OutOfFuel => ChatTemplateError::OutOfFuel { fuel: limits.fuel },
        ErrorKind::SyntaxError => ChatTemplateError::Syntax(describe(e)),
        ErrorKind::UnknownFunction
        | ErrorKind::UnknownFilter
        | ErrorKind::UnknownTest
        | ErrorKind::UnknownMethod
        | ErrorKind::TemplateNotFound
        | ErrorKind::BadInclude => ChatTemplateError::Unsupported(describe(e)),
        ErrorKind::WriteFailure => ChatTemplateError::OutputTooLarge {
            limit: limits.max_output,
        },
        _ => ChatTemplateError::Render(describe(e)),
    }
}
