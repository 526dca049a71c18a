//! The tokenizer a GGUF file describes, rebuilt with the `tokenizers` crate so that it produces
//! exactly llama.cpp's token ids.
//!
//! GGUF stores a byte-level BPE vocabulary as `tokenizer.ggml.tokens` (GPT-2 byte-to-unicode
//! encoded strings), `tokenizer.ggml.merges` ("left right" strings, in rank order) and
//! `tokenizer.ggml.token_type`. What it does not store is the pre-tokenizer: it only names it in
//! `tokenizer.ggml.pre`, and llama.cpp (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`) maps that name
//! to a list of split regexes. This module keeps the same table for the names we support.
//!
//! Special tokens follow llama.cpp's partitioning (`tokenizer_st_partition`): control tokens
//! (type 3) are matched whole only when the caller asks for special-token parsing; user-defined
//! tokens (type 4) are always matched whole.
use longquant_formats::gguf::{GgufFile, Metadata, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// Why a tokenizer could not be built from a GGUF file, or could not encode/decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is absent or has the wrong type.
    #[error("tokenizer metadata key `{key}` is missing or not a {expected}")]
    MissingKey {
        /// The GGUF key.
        key: &'static str,
        /// What type was expected.
        expected: &'static str,
    },
    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error("unsupported tokenizer model `{0}` (supported: gpt2, i.e. byte-level BPE)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error(
        "unsupported pre-tokenizer `{0}` (supported: llama-bpe, llama3, smollm, gpt2, default)"
    )]
    UnsupportedPre(String),
    /// A merge entry is not of the form "left right".
    #[error("merge #{index} `{merge}` is not two space-separated tokens")]
    BadMerge {
        /// Position in `tokenizer.ggml.merges`.
        index: usize,
        /// The entry, as stored.
        merge: String,
    },
    /// The token list and the token-type list have different lengths, or an id is out of range.
    #[error("inconsistent tokenizer metadata: {0}")]
    Inconsistent(String),
    /// The `tokenizers` crate refused the vocabulary or an input.
    #[error("tokenizer: {0}")]
    Backend(String),
}

/// llama.cpp's token types (`llama_token_type` in `llama.h`).
mod token_type {
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Split regexes per pre-tokenizer name, applied in order (each splits the pieces of the
/// previous one, keeping matches and non-matches as separate pieces), as llama.cpp does.
///
/// llama.cpp's GPT-2 pattern stops at `\s+(?!\S)` because its hand-written matcher also emits the
/// remaining whitespace; with an isolating split the leftover is a piece anyway, but we write the
/// trailing `|\s+` explicitly as GPT-2's tokenizer.json does. `default` (what llama.cpp assumes
/// when `tokenizer.ggml.pre` is absent) is the GPT-2 split. The one table: `export` rebuilds HF
/// tokenizers from it too.
pub(crate) fn pre_regexes(pre: &str) -> Option<(&'static [&'static str], bool)> {
    // (regexes, ignore_merges)
    const LLAMA3: &[&str] = &[
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ];
    const GPT2: &str =
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const SMOLLM: &[&str] = &[r"\p{N}", GPT2];
    match pre {
        // llama.cpp sets ignore_merges for the LLAMA3 pre-type: a word already in the vocabulary is
        // emitted whole without applying merges.
        "llama-bpe" | "llama3" => Some((LLAMA3, true)),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            Some((SMOLLM, false))
        }
        "gpt2" | "mpt" | "olmo" | "jais" | "default" => Some((&[GPT2], false)),
        _ => None,
    }
}

/// A GGUF model's tokenizer.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Matches control tokens whole (llama.cpp's `parse_special = true`).
    with_special: tokenizers::Tokenizer,
    /// Treats control tokens as plain text (llama.cpp's default `parse_special = false`).
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    n_vocab: usize,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("n_vocab", &self.n_vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn string_array<'a>(md: &'a Metadata, key: &'static str) -> Result<Vec<&'a str>, TokenizerError> {
    let missing = || TokenizerError::MissingKey {
        key,
        expected: "string array",
    };
    let arr = md.get(key).and_then(Value::as_array).ok_or_else(missing)?;
    arr.values
        .iter()
        .map(|v| v.as_str().ok_or_else(missing))
        .collect()
}

fn opt_u32(md: &Metadata, key: &str) -> Option<u32> {
    md.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl GgufTokenizer {
    /// Builds the tokenizer of an open GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_metadata(file.metadata())
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_metadata(md: &Metadata) -> Result<Self, TokenizerError> {
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or(TokenizerError::MissingKey {
                key: "tokenizer.ggml.model",
                expected: "string",
            })?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        // llama.cpp treats an absent pre as "default", which for BPE is the GPT-2 style split; we
        // only accept names we know.
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let (regexes, ignore_merges) =
            pre_regexes(pre).ok_or_else(|| TokenizerError::UnsupportedPre(pre.to_string()))?;

        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let merges_raw = string_array(md, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match md
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a.values.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Inconsistent(format!(
                "{} tokens but {} token types",
                tokens.len(),
                types.len()
            )));
        }
        let n_vocab = tokens.len();
        let n_vocab_u32 = u32::try_from(n_vocab).map_err(|_| {
            TokenizerError::Inconsistent(format!("{n_vocab} tokens do not fit u32 ids"))
        })?;

        let mut vocab = Vocab::default();
        for (id, tok) in (0..n_vocab_u32).zip(tokens.iter()) {
            // Duplicate strings: llama.cpp's map keeps the last id, as does this insert.
            vocab.insert((*tok).to_string(), id);
        }
        let mut merges: Merges = Vec::with_capacity(merges_raw.len());
        for (index, m) in merges_raw.iter().enumerate() {
            // Token strings are byte-level encoded, so they never contain a literal space: the
            // first space separates the pair.
            let (a, b) = m.split_once(' ').ok_or_else(|| TokenizerError::BadMerge {
                index,
                merge: (*m).to_string(),
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;

        let mut pres: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
        for re in regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;
            pres.push(split.into());
        }
        // Byte-level mapping only; the splitting was done above.
        pres.push(ByteLevel::new(false, false, false).into());

        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(Sequence::new(pres)));
        tk.with_decoder(Some(ByteLevelDecoder::default()));

        let mut added = Vec::new();
        for (tok, &ty) in tokens.iter().zip(types.iter()) {
            match ty {
                token_type::CONTROL => added.push(AddedToken::from(*tok, true).normalized(false)),
                token_type::USER_DEFINED => {
                    added.push(AddedToken::from(*tok, false).normalized(false))
                }
                _ => {}
            }
        }
        tk.add_tokens(&added);

        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);

        let bos = opt_u32(md, "tokenizer.ggml.bos_token_id").filter(|&b| (b as usize) < n_vocab);
        let eos = opt_u32(md, "tokenizer.ggml.eos_token_id").filter(|&b| (b as usize) < n_vocab);
        // llama.cpp's default for BPE vocabularies without the key is to add BOS.
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        Ok(Self {
            with_special: tk,
            plain,
            bos,
            eos,
            add_bos,
            n_vocab,
        })
    }

    /// Tokenizes `text`. With `add_special`, BOS is prepended when the model's
    /// `tokenizer.ggml.add_bos_token` asks for it (llama.cpp's `add_special`). With
    /// `parse_special`, control tokens written in the text (e.g. `<|im_start|>`) become their ids;
    /// otherwise they are tokenized as plain text, as `llama-perplexity` does.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let tk = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Backend(e.to_string()))?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Turns ids back into text (special tokens rendered as their text).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.with_special
            .decode(ids, false)
            .map_err(|e| TokenizerError::Backend(e.to_string()))
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model asks for BOS at the start of a sequence (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }
}
