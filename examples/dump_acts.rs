//! Dumps our forward pass's matrix-product inputs and logits for a token list, to compare with
//! llama.cpp's intermediates (scripts/llamacpp/dump_tensors.py writes those; compare_dump.py pairs them).
//!
//! ```text
//! cargo run --release --features trace --example dump_acts -- MODEL.gguf TOKENS.json OUT_DIR
//! ```
//!
//! `LONGQUANT_CTK` / `LONGQUANT_CTV` in the environment pick the K/V cache types (`q8_0`, ...;
//! default f16), to compare with `dump_tensors.py --ctk/--ctv`.
//!
//! With the `trace` feature it also writes every traced intermediate (`Qcur-0` after RoPE,
//! `Kcur-0`, `Vcur-0`, `attn_out-0`, `ffn_inp-0`, `ffn_out-0`, `l_out-0`, ...) the same way.
//!
//! Writes OUT_DIR/NNNN_<tensor>.f32 (raw little-endian f32, `n_tok` rows of the weight's width: the
//! input of that weight's matrix product), OUT_DIR/logits.f32 (`n_tok × n_vocab`) and
//! OUT_DIR/index.json (`[[file, tensor, n_values], ...]`).
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, Model};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, tokens, out] = &args[..] else {
        return Err("usage: dump_acts MODEL.gguf TOKENS.json OUT_DIR".into());
    };
    let file = GgufFile::open(std::path::Path::new(model))?;
    let m = Model::load(&file)?;
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(tokens)?)?;
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let write = |path: &std::path::Path, v: &[f32]| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for x in v {
            f.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    };
    #[cfg(feature = "trace")]
    let traced = {
        let traced = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(String, Vec<f32>)>::new()));
        let t = traced.clone();
        longquant::model::forward::set_trace(Some(Box::new(move |name: &str, v: &[f32]| {
            t.borrow_mut().push((name.to_string(), v.to_vec()))
        })));
        traced
    };
    let cache = |var: &str| -> Result<longquant::model::KvType, Box<dyn std::error::Error>> {
        Ok(match std::env::var(var) {
            Ok(v) => v.parse()?,
            Err(_) => Default::default(),
        })
    };
    let opts = EvalOptions {
        cache_type_k: cache("LONGQUANT_CTK")?,
        cache_type_v: cache("LONGQUANT_CTV")?,
    };
    let mut index = Vec::new();
    let mut logits = Vec::new();
    let mut err = None;
    m.eval_observed(
        &ids,
        0,
        &opts,
        &mut |_, l| logits.extend_from_slice(l),
        &mut |name, acts| {
            let fname = format!("{:04}_{name}.f32", index.len());
            if let Err(e) = write(&out.join(&fname), acts) {
                err = Some(e);
            }
            index.push((fname, name.to_string(), acts.len()));
        },
    )?;
    if let Some(e) = err {
        return Err(e.into());
    }
    #[cfg(feature = "trace")]
    for (name, v) in traced.borrow().iter() {
        let fname = format!("{:04}_{name}.f32", index.len());
        write(&out.join(&fname), v)?;
        index.push((fname, name.clone(), v.len()));
    }
    write(&out.join("logits.f32"), &logits)?;
    std::fs::write(out.join("index.json"), serde_json::to_string(&index)?)?;
    println!("{} tensors -> {}", index.len(), out.display());
    Ok(())
}
