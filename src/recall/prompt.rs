//! JSON key-value retrieval prompts (the `json_kv` task of HELMET, used to evaluate ProLong): a
//! JSON object of many random UUID → UUID pairs, and a question asking for the value of one key.
//!
//! A prompt is built to a requested length in *tokens of the model's tokenizer*, counting the
//! chat template and BOS: pairs are added while the whole prompt still fits. The result satisfies
//! `len ≤ target < len + (tokens one more pair would add)`, i.e. it is within one pair of the
//! target (a pair is ~40–60 tokens with Llama-3's or SmolLM2's tokenizer). The queried key is the
//! pair at index `round(depth × (n_pairs − 1))`, so depth 0 is the first pair and 1 the last.
//!
//! UUIDs (version 4 format) come from a SplitMix64 stream seeded by the caller, so a prompt is a
//! pure function of (tokenizer, format, target length, depth, seed).
use crate::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use std::collections::HashSet;

/// Why a prompt could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The depth is not a number in [0, 1].
    #[error("depth {0} is not in [0, 1]")]
    BadDepth(f64),
    /// Even a single pair does not fit in the requested length.
    #[error(
        "a prompt of {target} tokens cannot hold one key-value pair (one pair needs {needed})"
    )]
    TooShort {
        /// Requested length.
        target: usize,
        /// Length of the one-pair prompt.
        needed: usize,
    },
    /// The chat template failed.
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// How the task text is wrapped for the model.
#[derive(Debug, Clone)]
pub enum PromptFormat {
    /// Instruction-tuned model: the task is one user message rendered with the model's chat
    /// template, with the generation prompt appended.
    Chat(ChatTemplate),
    /// Base model: the task text as is (BOS added per the tokenizer).
    Plain,
}

/// A built prompt.
#[derive(Debug, Clone)]
pub struct KvPrompt {
    /// The full prompt text (after the chat template).
    pub text: String,
    /// Its tokens, ready to evaluate.
    pub tokens: Vec<u32>,
    /// The key asked for.
    pub key: String,
    /// The expected answer.
    pub value: String,
    /// Number of pairs in the JSON object.
    pub n_pairs: usize,
    /// Index of the queried pair.
    pub target_index: usize,
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to make distinct UUIDs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A random UUID in version-4 layout (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, y ∈ 8..b).
    pub fn uuid_v4(&mut self) -> String {
        let hi = (self.next_u64() & !0xF000) | 0x4000; // version nibble
        let lo = (self.next_u64() & !(0xC000 << 48)) | (0x8000 << 48); // variant bits 10
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xFFFF,
            hi & 0xFFFF,
            lo >> 48,
            lo & 0xFFFF_FFFF_FFFF
        )
    }
}

/// Seed for one (length, depth, sample) cell of a sweep, so every cell gets its own UUIDs.
pub fn cell_seed(seed: u64, length: usize, depth_index: usize, sample: usize) -> u64 {
    let mut g = SplitMix64::new(seed);
    let mut s = g.next_u64() ^ (length as u64);
    s = SplitMix64::new(s).next_u64() ^ (depth_index as u64);
    s = SplitMix64::new(s).next_u64() ^ (sample as u64);
    SplitMix64::new(s).next_u64()
}

/// `n` distinct (key, value) UUID pairs from `seed`; pair `i` does not depend on `n`.
fn pairs(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut g = SplitMix64::new(seed);
    let mut seen = HashSet::with_capacity(2 * n);
    let mut fresh = |g: &mut SplitMix64| loop {
        let u = g.uuid_v4();
        if seen.insert(u.clone()) {
            return u;
        }
    };
    (0..n)
        .map(|_| {
            let k = fresh(&mut g);
            let v = fresh(&mut g);
            (k, v)
        })
        .collect()
}

/// Where the answer starts. HELMET's json_kv puts it at the start of the model's turn (after the
/// chat template's generation prompt), or at the end of a plain prompt.
const ANSWER_PREFIX: &str = "Corresponding value:";

/// The task text (HELMET's json_kv wording), without the answer prefix.
fn task_text(pairs: &[(String, String)], key: &str) -> String {
    let mut json = String::with_capacity(pairs.len() * 84 + 2);
    json.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            json.push_str(", ");
        }
        json.push('"');
        json.push_str(k);
        json.push_str("\": \"");
        json.push_str(v);
        json.push('"');
    }
    json.push('}');
    format!(
        "Extract the value corresponding to the specified key in the JSON object below.\n\n\
         JSON data:\n{json}\n\nKey: \"{key}\""
    )
}

/// Turns prompt text into model input. Chat prompts carry their special tokens in the text;
/// BOS is added only when the model wants it and the template has not written it already.
fn tokenize(
    tok: &GgufTokenizer,
    format: &PromptFormat,
    user: &str,
) -> Result<(String, Vec<u32>), PromptError> {
    match format {
        PromptFormat::Plain => {
            let text = format!("{user}\n{ANSWER_PREFIX}");
            let ids = tok.encode(&text, true, false)?;
            Ok((text, ids))
        }
        PromptFormat::Chat(t) => {
            let mut text = t.render(&[ChatMessage::new("user", user)], true)?;
            text.push_str(ANSWER_PREFIX);
            let has_bos = !t.bos_token().is_empty() && text.starts_with(t.bos_token());
            let ids = tok.encode(&text, !has_bos, true)?;
            Ok((text, ids))
        }
    }
}

/// Renders the prompt with exactly `n_pairs` pairs from `seed`, querying pair `target_index`.
pub fn render_kv_prompt(
    tok: &GgufTokenizer,
    format: &PromptFormat,
    seed: u64,
    n_pairs: usize,
    target_index: usize,
) -> Result<KvPrompt, PromptError> {
    let ps = pairs(seed, n_pairs.max(1));
    let idx = target_index.min(ps.len() - 1);
    let (key, value) = ps.get(idx).cloned().ok_or(PromptError::TooShort {
        target: 0,
        needed: 0,
    })?;
    let user = task_text(&ps, &key);
    let (text, tokens) = tokenize(tok, format, &user)?;
    Ok(KvPrompt {
        text,
        tokens,
        key,
        value,
        n_pairs: ps.len(),
        target_index: idx,
    })
}

/// Index of the queried pair for `depth` in an object of `n_pairs` pairs.
pub fn depth_index(depth: f64, n_pairs: usize) -> usize {
    (depth * n_pairs.saturating_sub(1) as f64).round() as usize
}

/// Builds the longest prompt of at most `target_tokens` tokens (see the module notes for the
/// tolerance), with the queried key at `depth`.
pub fn build_kv_prompt(
    tok: &GgufTokenizer,
    format: &PromptFormat,
    target_tokens: usize,
    depth: f64,
    seed: u64,
) -> Result<KvPrompt, PromptError> {
    if !(0.0..=1.0).contains(&depth) {
        return Err(PromptError::BadDepth(depth));
    }
    let measure = |n: usize| -> Result<KvPrompt, PromptError> {
        render_kv_prompt(tok, format, seed, n, depth_index(depth, n))
    };
    let one = measure(1)?;
    if one.tokens.len() > target_tokens {
        return Err(PromptError::TooShort {
            target: target_tokens,
            needed: one.tokens.len(),
        });
    }
    // Estimate from two points, then bracket and bisect on the exact token count (which grows
    // by tens of tokens per pair, so it is monotone in the number of pairs).
    let two = measure(2)?;
    let per_pair = two.tokens.len().saturating_sub(one.tokens.len()).max(1);
    let guess = 1 + (target_tokens - one.tokens.len()) / per_pair;
    let (mut lo, mut lo_prompt) = (1usize, one);
    let probe = guess.max(2);
    let p = measure(probe)?;
    let mut hi = if p.tokens.len() <= target_tokens {
        // Gallop upwards until a count overflows.
        lo = probe;
        lo_prompt = p;
        let mut step = (probe / 16).max(2);
        loop {
            let p = measure(lo + step)?;
            if p.tokens.len() > target_tokens {
                break lo + step;
            }
            lo += step;
            lo_prompt = p;
            step *= 2;
        }
    } else {
        probe
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let p = measure(mid)?;
        if p.tokens.len() <= target_tokens {
            lo = mid;
            lo_prompt = p;
        } else {
            hi = mid;
        }
    }
    Ok(lo_prompt)
}
