//! Reading a real GGUF: SmolLM2-135M-Instruct, Q4_1 (see DESIGN.md §5 for where it comes from).

mod common;

use std::collections::HashMap;

use longquant_formats::gguf::GgufFile;
use longquant_formats::GgmlType;

#[test]
fn smollm2_header() {
    let Some(path) = common::smollm2_path() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata().len(), 33);
    let m = f.metadata();
    assert_eq!(
        m.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    assert_eq!(
        m.get("llama.block_count").and_then(|v| v.as_u64()),
        Some(30)
    );
    assert_eq!(
        m.get("llama.embedding_length").and_then(|v| v.as_u64()),
        Some(576)
    );
    let tokens = m
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens.values[0].as_str(), Some("<|endoftext|>"));

    assert_eq!(f.tensors().len(), 272);
    let mut by_type: HashMap<GgmlType, usize> = HashMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ggml_type).or_default() += 1;
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
    assert_eq!(by_type.get(&GgmlType::Q4_1), Some(&210));
    assert_eq!(by_type.get(&GgmlType::F32), Some(&61));
    assert_eq!(by_type.get(&GgmlType::Q8_0), Some(&1));
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dims.as_slice(), emb.ggml_type),
        (&[576u64, 49152][..], GgmlType::Q8_0)
    );
    assert_eq!(emb.n_elements(), 576 * 49152);
    // Tensors are packed: the last one ends within one alignment step of the end of the file.
    let end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert!(end <= f.file_size() && f.file_size() - end < 32);
}
