//! Split GGUF sets (`GgufFile::open` on the first file of `PREFIX-0000i-of-0000N.gguf`, which
//! every command uses): the input is cut at the byte sequence `\0SPLIT\0` into up to four parts,
//! written as the files of one set (N = the number of parts). The merged view or a typed error;
//! an accepted set hands out, for every tensor, a data slice of exactly its byte size, and every
//! metadata key of the merged view can be read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longquant_formats::gguf::GgufFile;

const SEP: &[u8] = b"\0SPLIT\0";

fuzz_target!(|data: &[u8]| {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while parts.len() < 3 {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    let dir = std::env::temp_dir().join(format!("lq-fuzz-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let n = parts.len();
    for (i, p) in parts.iter().enumerate() {
        let name = format!("fz-{:05}-of-{:05}.gguf", i + 1, n);
        if std::fs::write(dir.join(name), p).is_err() {
            return;
        }
    }
    if let Ok(f) = GgufFile::open(dir.join(format!("fz-00001-of-{n:05}.gguf"))) {
        for t in f.tensors() {
            assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        }
        for (k, _) in f.metadata().iter() {
            assert!(f.metadata().get(k).is_some());
        }
    }
});
