//! llama-quantize's per-tensor and metadata controls, shared by `convert` and `quantize`, with
//! llama.cpp's semantics (tools/quantize/quantize.cpp parses them, src/llama-quant.cpp applies
//! them):
//!
//! - `--tensor-type PATTERN=TYPE` (repeatable): the pattern is lowercased, then searched (not
//!   anchored) in each tensor name; the **first** rule that matches decides, in the order given
//!   (llama-quant.cpp stops at the first match). A matched tensor skips the mix rules, and so does
//!   not advance the mix's `attn_v`/`ffn_down` counters; the shape fallback still applies. Rules
//!   apply only when the file type is a quantized one, as in llama.cpp.
//! - `--output-tensor-type T` / `--token-embedding-type T`: `output.weight` / `token_embd.weight`
//!   get T, with no shape fallback. With tied embeddings `token_embd` follows the output rules, so
//!   `--output-tensor-type` reaches it when no `--token-embedding-type` is given (then with the
//!   fallback).
//! - `--leave-output-tensor`: `output.weight` is not quantized (keeps its input type).
//! - `--override-kv KEY=TYPE:VALUE` (repeatable; TYPE int, float, bool or str): written after the
//!   copied metadata, in order, each key moved to the end as ggml's `gguf_set_val_*` does; ints are
//!   written as UINT32 of the absolute value and floats as FLOAT32, as llama-quantize writes them.
//! - `--include-weights S` / `--exclude-weights S` (repeatable, not together): keep only / drop the
//!   importance-matrix entries whose name contains S. A matrix left empty is no matrix at all.
//! - `--prune-layers L0,L1,...`: drop those blocks and renumber the rest contiguously; the mix
//!   still counts layers as the unpruned model has them (llama.cpp reads `n_layer` before pruning),
//!   `block_count` becomes the new count, and importance-matrix entries are found by the old names.
//!
//! Where llama-quantize is lax we refuse: a type longquant cannot write, an override whose value
//! does not parse (llama.cpp's `atol`/`atof` read garbage as 0), an integer whose absolute value
//! does not fit UINT32, a pattern that is not a valid regular expression.

use longquant_formats::gguf::{Metadata, Value};
use longquant_formats::GgmlType;

use super::stream::block_format;

/// The longest metadata key llama.cpp's override accepts (its key buffer is 128 bytes).
const MAX_OVERRIDE_KEY: usize = 127;
/// The longest string value llama.cpp's override accepts.
const MAX_OVERRIDE_STR: usize = 127;

/// A malformed control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option} {given:?}: {what}")]
pub struct ControlError {
    /// The option (`--tensor-type`, ...).
    pub option: &'static str,
    /// What was given, as given.
    pub given: String,
    /// What is wrong with it.
    pub what: String,
}

fn bad(option: &'static str, given: &str, what: impl Into<String>) -> ControlError {
    ControlError {
        option,
        given: given.to_string(),
        what: what.into(),
    }
}

/// Parse a ggml type name for a control (case-insensitive, ggml's names: `q4_k`, `Q8_0`, `f16`),
/// refusing types longquant cannot write.
pub fn parse_ggml_type(option: &'static str, s: &str) -> Result<GgmlType, ControlError> {
    let ty = GgmlType::from_name(s).ok_or_else(|| bad(option, s, "not a ggml type name"))?;
    if block_format(ty).is_none() {
        return Err(bad(
            option,
            s,
            format!(
                "longquant cannot write {} tensors (it writes f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs)",
                ty.name()
            ),
        ));
    }
    Ok(ty)
}

/// One `--tensor-type PATTERN=TYPE` rule.
#[derive(Debug, Clone)]
pub struct TensorTypeRule {
    /// The pattern as used (lowercased, as llama-quantize lowercases it).
    pub pattern: String,
    regex: regex::Regex,
    /// The type.
    pub ggml_type: GgmlType,
}

impl TensorTypeRule {
    /// Parse `PATTERN=TYPE`: the text up to the first `=` is the pattern.
    pub fn parse(s: &str) -> Result<TensorTypeRule, ControlError> {
        const OPT: &str = "--tensor-type";
        let (pat, ty) = s
            .split_once('=')
            .ok_or_else(|| bad(OPT, s, "expected PATTERN=TYPE"))?;
        if pat.is_empty() {
            return Err(bad(OPT, s, "missing tensor name pattern"));
        }
        if ty.is_empty() {
            return Err(bad(OPT, s, "missing quantization type"));
        }
        let pattern = pat.to_ascii_lowercase();
        let regex = regex::Regex::new(&pattern)
            .map_err(|e| bad(OPT, s, format!("not a regular expression: {e}")))?;
        Ok(TensorTypeRule {
            pattern,
            regex,
            ggml_type: parse_ggml_type(OPT, ty).map_err(|e| ControlError {
                given: s.to_string(),
                ..e
            })?,
        })
    }

    /// Whether the rule names `tensor` (a search anywhere in the name).
    pub fn matches(&self, tensor: &str) -> bool {
        self.regex.is_match(tensor)
    }
}

/// The type of the first rule that names `tensor`.
pub fn first_match(rules: &[TensorTypeRule], tensor: &str) -> Option<GgmlType> {
    rules
        .iter()
        .find(|r| r.matches(tensor))
        .map(|r| r.ggml_type)
}

/// One `--override-kv KEY=TYPE:VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct KvOverride {
    /// The key.
    pub key: String,
    /// The value, in the GGUF type llama-quantize writes it with.
    pub value: Value,
}

impl KvOverride {
    /// Parse `KEY=int:N`, `KEY=float:X`, `KEY=bool:true|false` or `KEY=str:TEXT`.
    pub fn parse(s: &str) -> Result<KvOverride, ControlError> {
        const OPT: &str = "--override-kv";
        let (key, rest) = s
            .split_once('=')
            .ok_or_else(|| bad(OPT, s, "expected KEY=TYPE:VALUE"))?;
        if key.is_empty() {
            return Err(bad(OPT, s, "empty key"));
        }
        if key.len() > MAX_OVERRIDE_KEY {
            return Err(bad(
                OPT,
                s,
                format!("keys are at most {MAX_OVERRIDE_KEY} bytes"),
            ));
        }
        let value = if let Some(v) = rest.strip_prefix("int:") {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| bad(OPT, s, format!("{v:?} is not an integer")))?;
            // llama-quantize writes every int override as UINT32 of its absolute value.
            let abs = u32::try_from(n.unsigned_abs()).map_err(|_| {
                bad(
                    OPT,
                    s,
                    "llama-quantize writes int overrides as UINT32; the absolute value must be below 2^32",
                )
            })?;
            Value::U32(abs)
        } else if let Some(v) = rest.strip_prefix("float:") {
            let x: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(OPT, s, format!("{v:?} is not a number")))?;
            Value::F32(x as f32)
        } else if let Some(v) = rest.strip_prefix("bool:") {
            match v {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(bad(OPT, s, "a bool is `true` or `false`")),
            }
        } else if let Some(v) = rest.strip_prefix("str:") {
            if v.len() > MAX_OVERRIDE_STR {
                return Err(bad(
                    OPT,
                    s,
                    format!("string values are at most {MAX_OVERRIDE_STR} bytes"),
                ));
            }
            Value::String(v.to_string())
        } else {
            return Err(bad(OPT, s, "TYPE must be int, float, bool or str"));
        };
        Ok(KvOverride {
            key: key.to_string(),
            value,
        })
    }
}

/// Set `key` as ggml's `gguf_set_val_*` does: an existing key is removed first, so the key ends
/// up last.
pub fn set_last(md: &mut Metadata, key: &str, value: impl Into<Value>) {
    md.remove(key);
    md.insert(key, value);
}

/// Apply overrides in order.
pub fn apply_overrides(md: &mut Metadata, overrides: &[KvOverride]) {
    for o in overrides {
        set_last(md, &o.key, o.value.clone());
    }
}

/// Parse `--prune-layers L0,L1,...`: non-negative block indices, sorted and deduplicated.
pub fn parse_prune_layers(s: &str) -> Result<Vec<u64>, ControlError> {
    const OPT: &str = "--prune-layers";
    let mut v = Vec::new();
    for part in s.split(',') {
        let n: u64 = part
            .trim()
            .parse()
            .map_err(|_| bad(OPT, s, format!("invalid layer id {part:?}")))?;
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// `sscanf(name, "blk.%d.")`: the block index of a tensor name.
pub(crate) fn block_of(name: &str) -> Option<(u64, usize)> {
    let rest = name.strip_prefix("blk.")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'.') {
        return None;
    }
    let n = rest.get(..digits)?.parse().ok()?;
    Some((n, digits))
}

/// The result of `--prune-layers` on a list of tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruning {
    /// Per input tensor, its new name, or `None` when its block is pruned.
    pub names: Vec<Option<String>>,
    /// `block_count` of the pruned model.
    pub block_count: u64,
}

/// llama-quant.cpp's `remap_layer` over all tensors: blocks are visited in ascending order; a
/// pruned block disappears, blocks below the first pruned one keep their index, the others are
/// renumbered consecutively after the last kept one.
pub fn prune(names: &[&str], prune: &[u64]) -> Pruning {
    let mut blocks: Vec<u64> = names
        .iter()
        .filter_map(|n| block_of(n))
        .map(|b| b.0)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let first = prune.first().copied().unwrap_or(u64::MAX);
    let mut map = std::collections::HashMap::new();
    let mut next = 0u64;
    for b in blocks {
        if prune.contains(&b) {
            map.insert(b, None);
        } else if b < first {
            map.insert(b, Some(b));
            next = b + 1;
        } else {
            map.insert(b, Some(next));
            next += 1;
        }
    }
    let names = names
        .iter()
        .map(|n| match block_of(n) {
            None => Some(n.to_string()),
            Some((b, digits)) => map.get(&b).copied().flatten().map(|nb| {
                let tail = n.get(4 + digits..).unwrap_or("");
                format!("blk.{nb}{tail}")
            }),
        })
        .collect();
    Pruning {
        names,
        block_count: next,
    }
}

/// Every control of llama-quantize that changes what is written (beyond the file type).
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// `--tensor-type` rules, first match wins.
    pub tensor_types: Vec<TensorTypeRule>,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--leave-output-tensor`: `output.weight` keeps its input type.
    pub leave_output_tensor: bool,
    /// `--override-kv`, in order.
    pub override_kv: Vec<KvOverride>,
    /// `--include-weights`: keep only the imatrix entries whose name contains one of these.
    pub include_weights: Vec<String>,
    /// `--exclude-weights`: drop the imatrix entries whose name contains one of these.
    pub exclude_weights: Vec<String>,
    /// `--prune-layers`, sorted and deduplicated.
    pub prune_layers: Vec<u64>,
    /// `--keep-split`: write the output in the same parts as the input.
    pub keep_split: bool,
}

impl Controls {
    /// Refuse combinations llama-quantize refuses.
    pub fn check(&self) -> Result<(), ControlError> {
        if !self.include_weights.is_empty() && !self.exclude_weights.is_empty() {
            return Err(bad(
                "--include-weights",
                &self.include_weights.join(","),
                "--include-weights and --exclude-weights cannot be used together",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_type_rules() {
        let r = TensorTypeRule::parse("BLK\\.[0-1]\\.FFN_Down=Q4_0").unwrap();
        assert_eq!(r.pattern, "blk\\.[0-1]\\.ffn_down");
        assert_eq!(r.ggml_type, GgmlType::Q4_0);
        assert!(r.matches("blk.1.ffn_down.weight"));
        assert!(!r.matches("blk.2.ffn_down.weight"));
        let rules = vec![
            TensorTypeRule::parse("attn_v=q8_0").unwrap(),
            TensorTypeRule::parse("attn=q5_0").unwrap(),
        ];
        assert_eq!(
            first_match(&rules, "blk.3.attn_v.weight"),
            Some(GgmlType::Q8_0)
        );
        assert_eq!(
            first_match(&rules, "blk.3.attn_q.weight"),
            Some(GgmlType::Q5_0)
        );
        assert_eq!(first_match(&rules, "blk.3.ffn_up.weight"), None);
        for bad in [
            "attn_v",
            "=q8_0",
            "attn_v=",
            "attn_v=q9_9",
            "attn_v=iq2_xxs",
            "(=q8_0",
        ] {
            assert!(TensorTypeRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides() {
        let o = KvOverride::parse("llama.context_length=int:-65536").unwrap();
        assert_eq!(o.key, "llama.context_length");
        assert_eq!(o.value, Value::U32(65536));
        assert_eq!(
            KvOverride::parse("a=float:1e6").unwrap().value,
            Value::F32(1e6)
        );
        assert_eq!(
            KvOverride::parse("a=bool:false").unwrap().value,
            Value::Bool(false)
        );
        assert_eq!(
            KvOverride::parse("a=str:x=y:z").unwrap().value,
            Value::String("x=y:z".into())
        );
        for bad in [
            "a",
            "=int:1",
            "a=int:x",
            "a=int:4294967296",
            "a=bool:yes",
            "a=u8:1",
            "a=float:",
        ] {
            assert!(KvOverride::parse(bad).is_err(), "{bad}");
        }
        let mut md = Metadata::new();
        md.insert("x", 1u32);
        md.insert("y", 2u32);
        apply_overrides(&mut md, &[KvOverride::parse("x=int:3").unwrap()]);
        assert_eq!(md.keys().collect::<Vec<_>>(), ["y", "x"]);
        assert_eq!(md.get("x"), Some(&Value::U32(3)));
    }

    #[test]
    fn pruning_like_remap_layer() {
        let names = [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.1.attn_q.weight",
            "blk.2.attn_q.weight",
            "blk.3.attn_q.weight",
            "blk.10.attn_q.weight",
        ];
        let p = prune(&names, &[1, 3]);
        assert_eq!(
            p.names,
            vec![
                Some("token_embd.weight".into()),
                Some("blk.0.attn_q.weight".into()),
                None,
                Some("blk.1.attn_q.weight".into()),
                None,
                Some("blk.2.attn_q.weight".into()),
            ]
        );
        assert_eq!(p.block_count, 3);
        let p = prune(&names, &[0]);
        assert_eq!(p.names[2].as_deref(), Some("blk.0.attn_q.weight"));
        assert_eq!(p.block_count, 4);
        // Pruning a block beyond the model changes nothing.
        assert_eq!(prune(&names, &[99]).block_count, 11);
        assert_eq!(parse_prune_layers("5, 1,5").unwrap(), vec![1, 5]);
        assert!(parse_prune_layers("1,-2").is_err());
        assert!(parse_prune_layers("").is_err());
    }
}
