//! Llama hyperparameters read from GGUF metadata (the `llama.*` keys llama.cpp's loader reads in
//! `llama_model::load_hparams`), with the same defaults.
use super::ModelError;
use crate::convert::config::limits::{
    MAX_CONTEXT, MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH,
};
use longquant_formats::gguf::{Metadata, Value};

/// Hyperparameters of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` (always "llama" today).
    pub architecture: String,
    /// Trained context length (`llama.context_length`).
    pub context_length: usize,
    /// Model width (`llama.embedding_length`).
    pub n_embd: usize,
    /// Transformer blocks (`llama.block_count`).
    pub n_layer: usize,
    /// FFN inner width (`llama.feed_forward_length`).
    pub n_ff: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`llama.attention.head_count_kv`, default: `n_head`).
    pub n_head_kv: usize,
    /// Per-head width (`llama.attention.key_length`, default `n_embd / n_head`).
    pub head_dim: usize,
    /// Rotated dimensions per head (`llama.rope.dimension_count`, default `head_dim`).
    pub n_rot: usize,
    /// RoPE base (`llama.rope.freq_base`, default 10000).
    pub rope_freq_base: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
}

fn get_usize(md: &Metadata, key: &str) -> Result<Option<usize>, ModelError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| ModelError::MissingKey {
                key: key.to_string(),
                expected: "unsigned integer",
            }),
    }
}

fn req_usize(md: &Metadata, key: &str) -> Result<usize, ModelError> {
    get_usize(md, key)?.ok_or_else(|| ModelError::MissingKey {
        key: key.to_string(),
        expected: "unsigned integer",
    })
}

fn get_f32(md: &Metadata, key: &str) -> Result<Option<f32>, ModelError> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ModelError::MissingKey {
                key: key.to_string(),
                expected: "number",
            }),
    }
}

impl LlamaConfig {
    /// Reads and checks the hyperparameters. `n_vocab` comes from the caller (the embedding
    /// tensor's row count), since `llama.vocab_size` is optional in GGUF.
    pub fn from_metadata(md: &Metadata, n_vocab: usize) -> Result<Self, ModelError> {
        let arch = md
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or(ModelError::MissingKey {
                key: "general.architecture".into(),
                expected: "string",
            })?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture(arch.to_string()));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let n_embd = req_usize(md, &k("embedding_length"))?;
        let n_layer = req_usize(md, &k("block_count"))?;
        let n_ff = req_usize(md, &k("feed_forward_length"))?;
        let n_head = req_usize(md, &k("attention.head_count"))?;
        let n_head_kv = get_usize(md, &k("attention.head_count_kv"))?.unwrap_or(n_head);
        let context_length = req_usize(md, &k("context_length"))?;
        let rms_eps = get_f32(md, &k("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| {
            ModelError::MissingKey {
                key: k("attention.layer_norm_rms_epsilon"),
                expected: "number",
            }
        })?;
        let rope_freq_base = get_f32(md, &k("rope.freq_base"))?.unwrap_or(10000.0);
        // Sanity limits first, so that nothing below (products of these, per-layer tables) is
        // sized by an absurd value and no product can overflow.
        let at_most = |key: &str, value: usize, limit: u64| -> Result<(), ModelError> {
            if value as u64 > limit {
                return Err(ModelError::TooLarge {
                    key: k(key),
                    value: value as u64,
                    limit,
                });
            }
            Ok(())
        };
        at_most("embedding_length", n_embd, MAX_WIDTH)?;
        at_most("block_count", n_layer, MAX_LAYERS)?;
        at_most("feed_forward_length", n_ff, MAX_WIDTH)?;
        at_most("attention.head_count", n_head, MAX_HEADS)?;
        at_most("attention.head_count_kv", n_head_kv, MAX_HEADS)?;
        at_most("context_length", context_length, MAX_CONTEXT)?;
        if n_vocab as u64 > MAX_VOCAB {
            return Err(ModelError::TooLarge {
                key: "token_embd.weight rows".into(),
                value: n_vocab as u64,
                limit: MAX_VOCAB,
            });
        }

        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if n_embd == 0
            || n_layer == 0
            || n_ff == 0
            || n_head == 0
            || n_head_kv == 0
            || context_length == 0
        {
            return bad(format!(
                "zero size: n_embd {n_embd}, n_layer {n_layer}, n_ff {n_ff}, n_head {n_head}, n_head_kv {n_head_kv}, context {context_length}"
            ));
        }
        if n_embd % n_head != 0 {
            return bad(format!(
                "n_embd {n_embd} is not a multiple of n_head {n_head}"
            ));
        }
        if n_head % n_head_kv != 0 {
            return bad(format!(
                "n_head {n_head} is not a multiple of n_head_kv {n_head_kv}"
            ));
        }
        let head_dim = get_usize(md, &k("attention.key_length"))?.unwrap_or(n_embd / n_head);
        at_most("attention.key_length", head_dim, MAX_HEAD_DIM)?;
        if head_dim * n_head != n_embd {
            return Err(ModelError::UnsupportedFeature(format!(
                "head width {head_dim} × {n_head} heads ≠ n_embd {n_embd}"
            )));
        }
        if let Some(vl) = get_usize(md, &k("attention.value_length"))? {
            if vl != head_dim {
                return Err(ModelError::UnsupportedFeature(format!(
                    "value_length {vl} ≠ key_length {head_dim}"
                )));
            }
        }
        let n_rot = get_usize(md, &k("rope.dimension_count"))?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return bad(format!(
                "rope.dimension_count {n_rot} must be even and ≤ head width {head_dim}"
            ));
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(rms_eps) || !positive(rope_freq_base) {
            return bad(format!(
                "rms eps {rms_eps} / rope base {rope_freq_base} must be finite and positive"
            ));
        }
        // Context-extension schemes change RoPE; refusing is better than silently wrong logits.
        if let Some(t) = md.get(&k("rope.scaling.type")).and_then(Value::as_str) {
            if t != "none" {
                return Err(ModelError::UnsupportedFeature(format!(
                    "rope scaling type `{t}`"
                )));
            }
        }
        if let Some(f) = get_f32(md, &k("rope.scaling.factor"))? {
            if f != 0.0 && f != 1.0 {
                return Err(ModelError::UnsupportedFeature(format!(
                    "rope scaling factor {f}"
                )));
            }
        }
        if n_vocab == 0 {
            return bad("empty vocabulary".into());
        }
        Ok(Self {
            architecture: arch.to_string(),
            context_length,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_freq_base,
            rms_eps,
            n_vocab,
        })
    }

    /// Width of the key/value projections (`n_head_kv · head_dim`).
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol_like() -> Metadata {
        let mut md = Metadata::new();
        md.insert("general.architecture", "llama");
        md.insert("llama.context_length", 8192u32);
        md.insert("llama.embedding_length", 576u32);
        md.insert("llama.block_count", 30u32);
        md.insert("llama.feed_forward_length", 1536u32);
        md.insert("llama.attention.head_count", 9u32);
        md.insert("llama.attention.head_count_kv", 3u32);
        md.insert("llama.rope.freq_base", 100000.0f32);
        md.insert("llama.attention.layer_norm_rms_epsilon", 1e-5f32);
        md
    }

    #[test]
    fn reads_smollm2_hparams() {
        let c = LlamaConfig::from_metadata(&smol_like(), 49152).unwrap();
        assert_eq!(
            (c.head_dim, c.n_rot, c.n_embd_kv(), c.n_vocab),
            (64, 64, 192, 49152)
        );
        assert_eq!(c.rope_freq_base, 100000.0);
    }

    #[test]
    fn unsupported_architecture() {
        let mut md = smol_like();
        md.insert("general.architecture", "falcon");
        assert!(
            matches!(LlamaConfig::from_metadata(&md, 10), Err(ModelError::UnsupportedArchitecture(a)) if a == "falcon")
        );
    }

    #[test]
    fn missing_and_inconsistent_hparams() {
        let mut md = smol_like();
        md.remove("llama.block_count");
        assert!(
            matches!(LlamaConfig::from_metadata(&md, 10), Err(ModelError::MissingKey { key, .. }) if key == "llama.block_count")
        );
        let mut md = smol_like();
        md.insert("llama.attention.head_count_kv", 2u32);
        assert!(matches!(
            LlamaConfig::from_metadata(&md, 10),
            Err(ModelError::InvalidConfig(_))
        ));
        let mut md = smol_like();
        md.insert("llama.embedding_length", "wide");
        assert!(matches!(
            LlamaConfig::from_metadata(&md, 10),
            Err(ModelError::MissingKey { .. })
        ));
        let mut md = smol_like();
        md.insert("llama.rope.scaling.type", "yarn");
        assert!(matches!(
            LlamaConfig::from_metadata(&md, 10),
            Err(ModelError::UnsupportedFeature(_))
        ));
    }
}
