//! Writes the sample GGUF (every metadata value type, a few tensor types) used by the gguf-py
//! interop test, so it can be inspected by hand:
//! `cargo run -p longquant-formats --example write_sample -- /tmp/sample.gguf`
//! then e.g. `python3 formats/tests/py/dump_gguf.py /tmp/sample.gguf --data`.

#[path = "../tests/common/sample.rs"]
mod sample;

use std::path::PathBuf;

use longquant_formats::gguf::{write_gguf, TensorSpec, WriteOptions};

fn main() {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_sample <output.gguf>");
        std::process::exit(2);
    };
    let tensors = sample::sample_tensors();
    let refs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    match write_gguf(
        &path,
        &sample::sample_metadata(),
        &refs,
        WriteOptions { overwrite: true },
    ) {
        Ok(size) => println!("wrote {} ({size} bytes)", path.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
