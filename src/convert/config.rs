//! `config.json` of a Hugging Face Llama checkpoint, read the way llama.cpp's converter reads it.
//!
//! Two spellings exist in the wild and both must give the same model: transformers 4 writes
//! `rope_theta`, `rope_scaling` and `torch_dtype` at the top level (ProLong's config does), transformers 5
//! nests the rope settings in `rope_parameters: {rope_theta, rope_type, ...}` and writes `dtype`.
//! The merge rules follow `TextModel.__init__` and `TextModel.set_gguf_parameters` in llama.cpp's
//! `conversion/base.py`: `rope_parameters` wins over `rope_scaling`, missing entries are filled from the
//! top-level keys, and the legacy `type` key stands in for `rope_type`.
//!
//! Anything the Llama graph in llama.cpp cannot represent (other architectures, biases, activations,
//! rope variants) is refused with a typed error that lists what is supported, rather than converted
//! into a file that silently computes something else.

use serde_json::{Map, Value};

/// Hugging Face `architectures` entries this converter accepts.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM"];
/// `rope_type` values this converter accepts (absent means `default`).
pub const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "yarn", "llama3"];

/// Upper bounds on config.json values, far above any published Llama-family model (Llama-3-405B:
/// 126 layers, hidden 16384, FFN 53248, 128 heads, head_dim 128; the largest vocabularies are
/// about 2^18 tokens, the longest contexts about 10M positions). They exist so that a hostile or
/// mistyped config is refused with a clear error before anything is sized by it; the checkpoint's
/// own tensors are then checked against the config (see `convert::pipeline::plan`).
pub mod limits {
    /// Most transformer blocks (`num_hidden_layers`).
    pub const MAX_LAYERS: u64 = 4096;
    /// Widest `hidden_size` or `intermediate_size`.
    pub const MAX_WIDTH: u64 = 1 << 20;
    /// Most attention heads (`num_attention_heads`, `num_key_value_heads`).
    pub const MAX_HEADS: u64 = 4096;
    /// Widest attention head (`head_dim`).
    pub const MAX_HEAD_DIM: u64 = 4096;
    /// Largest `vocab_size`.
    pub const MAX_VOCAB: u64 = 1 << 24;
    /// Longest context (`max_position_embeddings`, `original_max_position_embeddings`).
    pub const MAX_CONTEXT: u64 = 1 << 28;
}

/// Why a `config.json` cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    #[error("config.json is not a JSON object: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("config.json has no `{field}`")]
    Missing {
        /// The field name.
        field: &'static str,
    },
    /// A field has the wrong JSON type or an impossible value.
    #[error("config.json field `{field}` = {value} is invalid: expected {expected}")]
    BadValue {
        /// The field name.
        field: String,
        /// The value found, as JSON text.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The checkpoint is not a Llama model.
    #[error(
        "unsupported architecture {found:?} (model_type {model_type:?}); supported: {supported:?}"
    )]
    UnsupportedArchitecture {
        /// `architectures` as found.
        found: Vec<String>,
        /// `model_type` as found.
        model_type: Option<String>,
        /// What is supported.
        supported: &'static [&'static str],
    },
    /// A rope variant llama.cpp's Llama graph does not implement (or not through a Llama GGUF).
    #[error("unsupported rope type {found:?}; supported: {supported:?}")]
    UnsupportedRope {
        /// The `rope_type` found.
        found: String,
        /// What is supported.
        supported: &'static [&'static str],
    },
    /// A feature of the config the Llama graph does not have.
    #[error("unsupported config: {0}")]
    Unsupported(String),
    /// Fields that contradict each other.
    #[error("inconsistent config: {0}")]
    Inconsistent(String),
    /// A value beyond what any model uses (see [`limits`]).
    #[error("config.json field `{field}` = {value} exceeds the limit {limit} (no real model is this large)")]
    TooLarge {
        /// The field name.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The largest accepted value.
        limit: u64,
    },
}

/// Which transformers generation wrote the config (only reported; both read the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSpelling {
    /// `rope_theta` / `rope_scaling` / `torch_dtype` at the top level.
    Transformers4,
    /// `rope_parameters` / `dtype`.
    Transformers5,
}

/// Rope frequency scaling, as the GGUF will carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain rope (`rope_type` absent or `default`).
    None,
    /// Position interpolation: `llama.rope.scaling.type = linear`, `.factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// YaRN: `llama.rope.scaling.{type,factor,original_context_length}` and the optional yarn keys.
    Yarn {
        /// Scale factor.
        factor: f64,
        /// Context length the base model was trained with.
        original_context_length: u64,
        /// `extrapolation_factor`, when given.
        ext_factor: Option<f64>,
        /// `attention_factor` (or `attn_factor`), when given.
        attn_factor: Option<f64>,
        /// `beta_fast`, when given.
        beta_fast: Option<f64>,
        /// `beta_slow`, when given.
        beta_slow: Option<f64>,
    },
    /// Llama-3.1 frequency-dependent scaling, carried as the `rope_freqs.weight` tensor.
    Llama3 {
        /// Scale applied to low frequencies (default 8).
        factor: f64,
        /// Default 1.
        low_freq_factor: f64,
        /// Default 4.
        high_freq_factor: f64,
        /// Default 8192.
        original_context_length: u64,
    },
}

/// The hyperparameters of a Llama checkpoint that the GGUF needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `architectures[0]` (or `LlamaForCausalLM` when only `model_type: llama` is given).
    pub architecture: String,
    /// Which spelling the file used.
    pub spelling: ConfigSpelling,
    /// `hidden_size` → `llama.embedding_length`.
    pub hidden_size: u64,
    /// `num_hidden_layers` → `llama.block_count`.
    pub n_layer: u64,
    /// `num_attention_heads` → `llama.attention.head_count`.
    pub n_head: u64,
    /// `num_key_value_heads` (defaults to `n_head`) → `llama.attention.head_count_kv`.
    pub n_head_kv: u64,
    /// `intermediate_size` → `llama.feed_forward_length`.
    pub intermediate_size: u64,
    /// `vocab_size` → `llama.vocab_size`.
    pub vocab_size: u64,
    /// Per-head dimension: `head_dim` if given, else `hidden_size / num_attention_heads`.
    pub head_dim: u64,
    /// Whether `head_dim` was written explicitly (convert_hf_to_gguf then also writes
    /// `llama.attention.key_length` / `value_length`).
    pub head_dim_explicit: bool,
    /// `rms_norm_eps` → `llama.attention.layer_norm_rms_epsilon` (stored as f32).
    pub rms_norm_eps: f64,
    /// `max_position_embeddings` → `llama.context_length`.
    pub context_length: Option<u64>,
    /// Rope base → `llama.rope.freq_base` (llama.cpp assumes 10000 when absent).
    pub rope_theta: Option<f64>,
    /// Rope scaling.
    pub rope_scaling: RopeScaling,
    /// `tie_word_embeddings` (transformers' default is true).
    pub tie_word_embeddings: bool,
    /// `torch_dtype` / `dtype` as declared (not trusted: the tensors' own dtypes decide).
    pub declared_dtype: Option<String>,
    /// `bos_token_id`, `eos_token_id`, ... as integers, for the tokenizer's special-token fallback.
    pub token_ids: Vec<(String, i64)>,
}

fn bad(field: &str, v: &Value, expected: &'static str) -> ConfigError {
    ConfigError::BadValue {
        field: field.to_string(),
        value: v.to_string(),
        expected,
    }
}

/// A JSON value treated as absent when it is missing or `null`, as Python's `dict.get` + `is None` does.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn as_count(field: &str, v: &Value) -> Result<u64, ConfigError> {
    match v.as_u64() {
        Some(n) if n > 0 && n <= u64::from(u32::MAX) => Ok(n),
        _ => Err(bad(field, v, "a positive integer below 2^32")),
    }
}

fn as_float(field: &str, v: &Value) -> Result<f64, ConfigError> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(field, v, "a finite number")),
    }
}

fn req_count(obj: &Map<String, Value>, field: &'static str) -> Result<u64, ConfigError> {
    let v = get(obj, field).ok_or(ConfigError::Missing { field })?;
    as_count(field, v)
}

/// `value` if it is at most `limit`, else [`ConfigError::TooLarge`].
fn at_most(field: &'static str, value: u64, limit: u64) -> Result<u64, ConfigError> {
    if value > limit {
        Err(ConfigError::TooLarge {
            field,
            value,
            limit,
        })
    } else {
        Ok(value)
    }
}

/// The first of `keys` present (and not null), like convert_hf_to_gguf's `find_hparam`.
fn find<'a>(
    obj: &'a Map<String, Value>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a Value)> {
    keys.iter().find_map(|k| get(obj, k).map(|v| (*k, v)))
}

impl LlamaConfig {
    /// Parse the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<LlamaConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        LlamaConfig::from_json(&v)
    }

    /// Interpret a parsed `config.json`.
    pub fn from_json(v: &Value) -> Result<LlamaConfig, ConfigError> {
        let obj = v
            .as_object()
            .ok_or_else(|| ConfigError::Json("top level is not an object".into()))?;

        let architectures: Vec<String> = match get(obj, "architectures") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Some(other) => return Err(bad("architectures", other, "a list of strings")),
            None => Vec::new(),
        };
        let model_type = get(obj, "model_type")
            .and_then(|x| x.as_str())
            .map(String::from);
        let architecture = match architectures.first() {
            Some(a) if SUPPORTED_ARCHITECTURES.contains(&a.as_str()) => a.clone(),
            None if model_type.as_deref() == Some("llama") => "LlamaForCausalLM".to_string(),
            _ => {
                return Err(ConfigError::UnsupportedArchitecture {
                    found: architectures,
                    model_type,
                    supported: SUPPORTED_ARCHITECTURES,
                })
            }
        };
        if obj.contains_key("text_config") {
            return Err(ConfigError::Unsupported(
                "nested `text_config` (multimodal checkpoints are not supported)".into(),
            ));
        }

        use limits::*;
        let hidden_size = at_most("hidden_size", req_count(obj, "hidden_size")?, MAX_WIDTH)?;
        let n_layer = at_most(
            "num_hidden_layers",
            req_count(obj, "num_hidden_layers")?,
            MAX_LAYERS,
        )?;
        let n_head = at_most(
            "num_attention_heads",
            req_count(obj, "num_attention_heads")?,
            MAX_HEADS,
        )?;
        let n_head_kv = match get(obj, "num_key_value_heads") {
            Some(x) => at_most(
                "num_key_value_heads",
                as_count("num_key_value_heads", x)?,
                MAX_HEADS,
            )?,
            None => n_head,
        };
        let intermediate_size = at_most(
            "intermediate_size",
            req_count(obj, "intermediate_size")?,
            MAX_WIDTH,
        )?;
        let vocab_size = at_most("vocab_size", req_count(obj, "vocab_size")?, MAX_VOCAB)?;
        let (head_dim, head_dim_explicit) = match get(obj, "head_dim") {
            Some(x) => (
                at_most("head_dim", as_count("head_dim", x)?, MAX_HEAD_DIM)?,
                true,
            ),
            None => {
                if hidden_size % n_head != 0 {
                    return Err(ConfigError::Inconsistent(format!(
                        "hidden_size {hidden_size} is not a multiple of num_attention_heads {n_head} and no head_dim is given"
                    )));
                }
                // The derived width obeys the same limit as an explicit one (fuzz finding:
                // hidden_size 8672 over 2 heads gave head_dim 4336).
                (
                    at_most("head_dim", hidden_size / n_head, MAX_HEAD_DIM)?,
                    false,
                )
            }
        };
        if n_head % n_head_kv != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(ConfigError::Inconsistent(format!(
                "head_dim {head_dim} is odd; rope needs pairs"
            )));
        }
        let rms_norm_eps = match find(obj, &["rms_norm_eps", "norm_eps"]) {
            Some((k, x)) => as_float(k, x)?,
            None => {
                return Err(ConfigError::Missing {
                    field: "rms_norm_eps",
                })
            }
        };
        if rms_norm_eps <= 0.0 {
            return Err(bad(
                "rms_norm_eps",
                &Value::from(rms_norm_eps),
                "a positive number",
            ));
        }
        let context_length = match find(
            obj,
            &[
                "max_position_embeddings",
                "n_ctx",
                "n_positions",
                "max_length",
                "max_sequence_length",
                "model_max_length",
            ],
        ) {
            Some((k, x)) => Some(at_most(
                "max_position_embeddings",
                as_count(k, x)?,
                MAX_CONTEXT,
            )?),
            None => None,
        };

        // Features the Llama graph in llama.cpp has no place for.
        if let Some(act) = get(obj, "hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ConfigError::Unsupported(format!(
                    "hidden_act {act} (only \"silu\")"
                )));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if let Some(x) = get(obj, flag) {
                if x.as_bool() == Some(true) {
                    return Err(ConfigError::Unsupported(format!(
                        "{flag} = true (only bias-free Llama)"
                    )));
                }
            }
        }
        if let Some(q) = get(obj, "quantization_config") {
            return Err(ConfigError::Unsupported(format!(
                "pre-quantized checkpoint (quantization_config = {q}); convert an unquantized checkpoint"
            )));
        }

        let (rope_theta, rope_scaling, spelling) = parse_rope(obj)?;

        let tie_word_embeddings = match get(obj, "tie_word_embeddings") {
            Some(x) => x
                .as_bool()
                .ok_or_else(|| bad("tie_word_embeddings", x, "true or false"))?,
            None => true,
        };
        let declared_dtype = find(obj, &["dtype", "torch_dtype"])
            .and_then(|(_, x)| x.as_str())
            .map(String::from);
        let spelling = if get(obj, "dtype").is_some() {
            ConfigSpelling::Transformers5
        } else {
            spelling
        };
        let mut token_ids = Vec::new();
        for (k, x) in obj {
            if let Some(name) = k.strip_suffix("_token_id") {
                if let Some(id) = x.as_i64() {
                    token_ids.push((name.to_string(), id));
                }
            }
        }

        Ok(LlamaConfig {
            architecture,
            spelling,
            hidden_size,
            n_layer,
            n_head,
            n_head_kv,
            intermediate_size,
            vocab_size,
            head_dim,
            head_dim_explicit,
            rms_norm_eps,
            context_length,
            rope_theta,
            rope_scaling,
            tie_word_embeddings,
            declared_dtype,
            token_ids,
        })
    }

    /// Heads sharing one KV head (`n_gqa` in llama.cpp).
    pub fn n_gqa(&self) -> u64 {
        self.n_head / self.n_head_kv
    }

    /// The `*_token_id` integer from config.json for `kind` (`"bos"`, `"eos"`, ...).
    pub fn token_id(&self, kind: &str) -> Option<i64> {
        self.token_ids
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| *v)
    }

    /// The values of the `rope_freqs.weight` tensor when the config asks for Llama-3.1 scaling.
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        match self.rope_scaling {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context_length,
            } => Some(llama3_rope_factors(
                self.rope_theta.unwrap_or(10000.0),
                self.head_dim,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context_length,
            )),
            _ => None,
        }
    }
}

/// Rope base, scaling and the spelling they were found in.
fn parse_rope(
    obj: &Map<String, Value>,
) -> Result<(Option<f64>, RopeScaling, ConfigSpelling), ConfigError> {
    let (params, spelling) = match (get(obj, "rope_parameters"), get(obj, "rope_scaling")) {
        (Some(p), _) => (p, ConfigSpelling::Transformers5),
        (None, Some(s)) => (s, ConfigSpelling::Transformers4),
        (None, None) => (&Value::Null, ConfigSpelling::Transformers4),
    };
    let empty = Map::new();
    let params = match params {
        Value::Null => &empty,
        Value::Object(m) => m,
        other => return Err(bad("rope_parameters", other, "an object")),
    };
    if params.contains_key("full_attention") || params.contains_key("sliding_attention") {
        return Err(ConfigError::Unsupported(
            "per-layer-type rope parameters (sliding-window attention is not part of Llama)".into(),
        ));
    }
    let field = |k: &str| format!("rope.{k}");
    let theta = match get(params, "rope_theta") {
        Some(x) => Some(as_float(&field("rope_theta"), x)?),
        None => match find(
            obj,
            &[
                "global_rope_theta",
                "rope_global_theta",
                "rope_theta_global",
                "rope_theta",
                "rotary_emb_base",
            ],
        ) {
            Some((k, x)) => Some(as_float(k, x)?),
            None => None,
        },
    };
    if let Some(t) = theta {
        if t <= 0.0 {
            return Err(bad("rope_theta", &Value::from(t), "a positive number"));
        }
    }
    if let Some(p) =
        get(params, "partial_rotary_factor").or_else(|| get(obj, "partial_rotary_factor"))
    {
        if p.as_f64() != Some(1.0) {
            return Err(ConfigError::Unsupported(format!(
                "partial_rotary_factor {p} (Llama ropes whole heads)"
            )));
        }
    }
    let rope_type = match get(params, "rope_type").or_else(|| get(params, "type")) {
        Some(x) => Some(
            x.as_str()
                .ok_or_else(|| bad("rope_type", x, "a string"))?
                .to_string(),
        ),
        None => None,
    };
    let opt_f = |k: &str| -> Result<Option<f64>, ConfigError> {
        match get(params, k) {
            Some(x) => Ok(Some(as_float(&field(k), x)?)),
            None => Ok(None),
        }
    };
    let orig_ctx = || -> Result<Option<u64>, ConfigError> {
        match get(params, "original_max_position_embeddings")
            .or_else(|| get(obj, "original_max_position_embeddings"))
        {
            Some(x) => Ok(Some(at_most(
                "original_max_position_embeddings",
                as_count("original_max_position_embeddings", x)?,
                limits::MAX_CONTEXT,
            )?)),
            None => Ok(None),
        }
    };
    let scaling = match rope_type.as_deref() {
        None | Some("default") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: opt_f("factor")?.ok_or(ConfigError::Missing {
                field: "rope_scaling.factor",
            })?,
        },
        Some("yarn") => RopeScaling::Yarn {
            factor: opt_f("factor")?.ok_or(ConfigError::Missing {
                field: "rope_scaling.factor",
            })?,
            original_context_length: orig_ctx()?.ok_or(ConfigError::Missing {
                field: "rope_scaling.original_max_position_embeddings",
            })?,
            ext_factor: opt_f("extrapolation_factor")?,
            attn_factor: match opt_f("attention_factor")? {
                Some(x) => Some(x),
                None => opt_f("attn_factor")?,
            },
            beta_fast: opt_f("beta_fast")?,
            beta_slow: opt_f("beta_slow")?,
        },
        Some(t) if t.eq_ignore_ascii_case("llama3") => RopeScaling::Llama3 {
            factor: opt_f("factor")?.unwrap_or(8.0),
            low_freq_factor: opt_f("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: opt_f("high_freq_factor")?.unwrap_or(4.0),
            original_context_length: orig_ctx()?.unwrap_or(8192),
        },
        Some(other) => {
            return Err(ConfigError::UnsupportedRope {
                found: other.to_string(),
                supported: SUPPORTED_ROPE_TYPES,
            })
        }
    };
    if let RopeScaling::Llama3 {
        low_freq_factor,
        high_freq_factor,
        ..
    } = scaling
    {
        if low_freq_factor == high_freq_factor {
            return Err(ConfigError::Inconsistent(
                "llama3 rope scaling with low_freq_factor == high_freq_factor".into(),
            ));
        }
    }
    Ok((theta, scaling, spelling))
}

/// Per-frequency rope factors for Llama-3.1 scaling (`LlamaModel.generate_extra_tensors` in
/// llama.cpp's `conversion/llama.py`). Computed in f32, as torch computes it there: high frequencies
/// keep factor 1, low frequencies get `factor`, the band between is interpolated smoothly.
pub fn llama3_rope_factors(
    base: f64,
    head_dim: u64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context_length: u64,
) -> Vec<f32> {
    let dim = head_dim as f32;
    let base = base as f32;
    let old_ctx = original_context_length as f64;
    // The wavelength bounds are Python floats, compared against f32 tensors (so rounded to f32).
    let low_freq_wavelen = (old_ctx / low_freq_factor) as f32;
    let high_freq_wavelen = (old_ctx / high_freq_factor) as f32;
    let band = (high_freq_factor - low_freq_factor) as f32;
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / dim;
            let freq = 1.0f32 / base.powf(exponent);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if wavelen < high_freq_wavelen {
                1.0
            } else if wavelen > low_freq_wavelen {
                factor as f32
            } else {
                let smooth = (old_ctx as f32 / wavelen - low_freq_factor as f32) / band;
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ProLong-64k's config as transformers 4 wrote it (values from DESIGN.md §4).
    const PROLONG_T4: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 65536,
        "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
        "rope_theta": 8000000.0, "tie_word_embeddings": false, "torch_dtype": "float32",
        "transformers_version": "4.44.2", "use_cache": true, "vocab_size": 128256 }"#;

    fn fixture_config() -> String {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/tiny-natural/config.json"
        );
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {p}: {e}"))
    }

    #[test]
    fn transformers5_fixture() {
        let c = LlamaConfig::from_json_str(&fixture_config()).unwrap();
        assert_eq!(c.spelling, ConfigSpelling::Transformers5);
        assert_eq!(
            (
                c.hidden_size,
                c.n_layer,
                c.n_head,
                c.n_head_kv,
                c.intermediate_size,
                c.vocab_size
            ),
            (256, 16, 4, 2, 768, 49152)
        );
        assert_eq!((c.head_dim, c.head_dim_explicit), (64, true));
        assert_eq!(c.rope_theta, Some(8_000_000.0));
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.context_length, Some(8192));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.declared_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.token_id("bos"), Some(1));
        assert_eq!(c.token_id("pad"), None);
    }

    #[test]
    fn transformers4_prolong() {
        let c = LlamaConfig::from_json_str(PROLONG_T4).unwrap();
        assert_eq!(c.spelling, ConfigSpelling::Transformers4);
        assert_eq!(
            (
                c.hidden_size,
                c.n_layer,
                c.n_head,
                c.n_head_kv,
                c.intermediate_size,
                c.vocab_size
            ),
            (4096, 32, 32, 8, 14336, 128256)
        );
        assert_eq!((c.head_dim, c.head_dim_explicit), (128, false));
        assert_eq!(c.rope_theta, Some(8e6));
        assert_eq!(c.context_length, Some(65536));
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.declared_dtype.as_deref(), Some("float32"));
        assert_eq!(c.n_gqa(), 4);
        assert_eq!(c.token_id("eos"), Some(128009));
        assert!(c.rope_freqs().is_none());
    }

    #[test]
    fn both_spellings_agree() {
        let mut v: Value = serde_json::from_str(PROLONG_T4).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.remove("torch_dtype");
        o.insert("dtype".into(), "float32".into());
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 8000000.0, "rope_type": "default"}),
        );
        let t5 = LlamaConfig::from_json(&v).unwrap();
        let t4 = LlamaConfig::from_json_str(PROLONG_T4).unwrap();
        assert_eq!(t5.spelling, ConfigSpelling::Transformers5);
        assert_eq!(
            LlamaConfig {
                spelling: t4.spelling,
                ..t5
            },
            t4
        );
    }

    fn with(base: &str, key: &str, value: Value) -> Value {
        let mut v: Value = serde_json::from_str(base).unwrap();
        v.as_object_mut().unwrap().insert(key.into(), value);
        v
    }

    #[test]
    fn llama31_rope_factors() {
        let v = with(
            PROLONG_T4,
            "rope_scaling",
            serde_json::json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
        );
        let mut v = v;
        v.as_object_mut()
            .unwrap()
            .insert("rope_theta".into(), 500000.0.into());
        let c = LlamaConfig::from_json(&v).unwrap();
        let f = c.rope_freqs().unwrap();
        assert_eq!(f.len(), 64);
        // Wavelength 2π·θ^(2i/d): short wavelengths (< 8192/4) keep factor 1, long ones (> 8192) get 8.
        for (i, &x) in f.iter().enumerate() {
            let wavelen = 2.0 * std::f64::consts::PI * 500000f64.powf(2.0 * i as f64 / 128.0);
            if wavelen < 2048.0 * 0.999 {
                assert_eq!(x, 1.0, "i={i}");
            } else if wavelen > 8192.0 * 1.001 {
                assert_eq!(x, 8.0, "i={i}");
            } else {
                // In the band: the f64 formula agrees to f32 precision.
                let smooth = (8192.0 / wavelen - 1.0) / 3.0;
                let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
                assert!(
                    (x as f64 - want).abs() < 1e-4 * want,
                    "i={i}: {x} vs {want}"
                );
            }
        }
        assert!(
            f.windows(2).all(|w| w[0] <= w[1]),
            "factors grow with wavelength"
        );
        assert!(
            f.iter().any(|&x| x > 1.0 && x < 8.0),
            "some frequencies fall in the band"
        );
    }

    #[test]
    fn linear_and_yarn() {
        let c = LlamaConfig::from_json(&with(
            PROLONG_T4,
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 4.0}),
        ))
        .unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        let c = LlamaConfig::from_json(&with(
            PROLONG_T4,
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                "beta_fast": 32.0, "attn_factor": 1.1}),
        ))
        .unwrap();
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Yarn {
                factor: 4.0,
                original_context_length: 32768,
                ext_factor: None,
                attn_factor: Some(1.1),
                beta_fast: Some(32.0),
                beta_slow: None
            }
        );
    }

    #[test]
    fn refusals_are_typed() {
        let e = LlamaConfig::from_json(&with(
            PROLONG_T4,
            "architectures",
            serde_json::json!(["MistralForCausalLM"]),
        ))
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::UnsupportedArchitecture { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("LlamaForCausalLM"));
        let e = LlamaConfig::from_json(&with(
            PROLONG_T4,
            "rope_scaling",
            serde_json::json!({"rope_type": "dynamic", "factor": 2.0}),
        ))
        .unwrap_err();
        assert!(matches!(e, ConfigError::UnsupportedRope { .. }), "{e}");
        assert!(e.to_string().contains("llama3"));
        let e =
            LlamaConfig::from_json(&with(PROLONG_T4, "num_key_value_heads", 7.into())).unwrap_err();
        assert!(matches!(e, ConfigError::Inconsistent(_)), "{e}");
        let e =
            LlamaConfig::from_json(&with(PROLONG_T4, "hidden_size", "4096".into())).unwrap_err();
        assert!(matches!(e, ConfigError::BadValue { .. }), "{e}");
        let e =
            LlamaConfig::from_json(&with(PROLONG_T4, "attention_bias", true.into())).unwrap_err();
        assert!(matches!(e, ConfigError::Unsupported(_)), "{e}");
        let mut v: Value = serde_json::from_str(PROLONG_T4).unwrap();
        v.as_object_mut().unwrap().remove("num_hidden_layers");
        assert!(matches!(
            LlamaConfig::from_json(&v).unwrap_err(),
            ConfigError::Missing {
                field: "num_hidden_layers"
            }
        ));
        assert!(matches!(
            LlamaConfig::from_json_str("[1]").unwrap_err(),
            ConfigError::Json(_)
        ));
    }
}
