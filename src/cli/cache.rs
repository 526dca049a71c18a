//! `--cache-type-k`/`--cache-type-v` (llama.cpp's `-ctk`/`-ctv`), shared by the commands that run
//! the forward pass.
use longquant::model::{EvalOptions, KvType};
use serde_json::json;

fn parse(s: &str) -> Result<KvType, String> {
    s.parse()
}

/// The K/V cache types of a forward-pass command.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct CacheArgs {
    /// K cache type, llama.cpp's `--cache-type-k`/`-ctk`: f32, f16, bf16, q8_0, q4_0, q4_1,
    /// iq4_nl, q5_0, q5_1 (default f16, or --kv-type).
    #[arg(long = "cache-type-k", value_parser = parse)]
    cache_type_k: Option<KvType>,
    /// V cache type, llama.cpp's `--cache-type-v`/`-ctv` (same types; default f16, or --kv-type).
    #[arg(long = "cache-type-v", value_parser = parse)]
    cache_type_v: Option<KvType>,
    /// Both cache types at once (the older spelling; --cache-type-k/-v take precedence).
    #[arg(long, value_parser = parse)]
    kv_type: Option<KvType>,
}

impl CacheArgs {
    /// (K type, V type).
    pub fn types(&self) -> (KvType, KvType) {
        let both = self.kv_type.unwrap_or_default();
        (
            self.cache_type_k.unwrap_or(both),
            self.cache_type_v.unwrap_or(both),
        )
    }

    /// Forward-pass options with these types.
    pub fn eval(&self) -> EvalOptions {
        let (k, v) = self.types();
        EvalOptions {
            cache_type_k: k,
            cache_type_v: v,
        }
    }

    /// The types for a JSON report: `cache_type_k`, `cache_type_v`, and `kv_type` (both halves'
    /// type when they agree, else `"mixed"`; kept for readers of the older field).
    pub fn json_fields(&self) -> [(&'static str, serde_json::Value); 3] {
        let (k, v) = self.types();
        [
            ("cache_type_k", json!(k.name())),
            ("cache_type_v", json!(v.name())),
            ("kv_type", json!(if k == v { k.name() } else { "mixed" })),
        ]
    }
}

/// Rewrites llama.cpp's short spellings `-ctk T`/`-ctv T` (and `-ctk=T`) to the long options,
/// which clap cannot declare as shorts (`-ctk` would read as `-c -t -k`).
pub fn rewrite_short_flags(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    args.map(|a| {
        let Some(s) = a.to_str() else { return a };
        for (short, long) in [("-ctk", "--cache-type-k"), ("-ctv", "--cache-type-v")] {
            if s == short {
                return long.into();
            }
            if let Some(rest) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                return format!("{long}={rest}").into();
            }
        }
        a
    })
    .collect()
}
