//! The sample GGUF used by the gguf-py interop test and the `write_sample` example: every metadata
//! value type (including nested, empty and UTF-8 content) and tensors of several ggml types.
#![allow(dead_code)]

use longquant_formats::gguf::{Array, Metadata, TensorSpec, Value, ValueType};
use longquant_formats::GgmlType;

pub fn sample_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.insert("general.architecture", "llama");
    m.insert("general.alignment", Value::U32(64));
    m.insert("sample.u8", Value::U8(250));
    m.insert("sample.i8", Value::I8(-7));
    m.insert("sample.u16", Value::U16(65535));
    m.insert("sample.i16", Value::I16(-32768));
    m.insert("sample.u32", Value::U32(4_000_000_000));
    m.insert("sample.i32", Value::I32(-123_456_789));
    m.insert("sample.f32", Value::F32(0.1));
    m.insert("sample.bool", Value::Bool(true));
    m.insert("sample.string", "Grüße, 世界 🦙\n\"quoted\"");
    m.insert("sample.empty_string", "");
    m.insert("sample.u64", Value::U64(u64::MAX));
    m.insert("sample.i64", Value::I64(i64::MIN));
    m.insert("sample.f64", Value::F64(-2.5e-300));
    m.insert(
        "sample.arr_str",
        Array::new(ValueType::String, vec!["a".into(), "".into(), "ü€".into()]),
    );
    m.insert(
        "sample.arr_f32",
        Array::new(ValueType::F32, vec![Value::F32(1.5), Value::F32(-0.25)]),
    );
    m.insert(
        "sample.arr_i64",
        Array::new(ValueType::I64, vec![Value::I64(-1), Value::I64(i64::MAX)]),
    );
    m.insert(
        "sample.arr_bool",
        Array::new(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
    );
    m.insert("sample.arr_empty", Array::new(ValueType::U32, vec![]));
    m.insert("sample.arr_nested", nested_array());
    m
}

/// A nested array (array of arrays). gguf-py 0.19's reader reports it flattened (types
/// `[ARRAY, ARRAY, U16]`, contents `[1, 2, 3]`); the interop test flattens ours the same way.
pub fn nested_array() -> Value {
    let inner = |v: &[u16]| {
        Value::Array(Array::new(
            ValueType::U16,
            v.iter().map(|&x| Value::U16(x)).collect(),
        ))
    };
    Value::Array(Array::new(
        ValueType::Array,
        vec![inner(&[1, 2]), inner(&[3])],
    ))
}

pub fn sample_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    let mk = |name: &str, dims: Vec<u64>, t: GgmlType, seed: u8| {
        let n: u64 = dims.iter().product();
        let len = t.row_size(n).unwrap_or(0) as usize;
        let data = (0..len)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect();
        (TensorSpec::new(name, dims, t), data)
    };
    vec![
        mk("token_embd.weight", vec![8, 3], GgmlType::F32, 1),
        mk("blk.0.attn_norm.weight", vec![8], GgmlType::F16, 2),
        mk("blk.0.attn_q.weight", vec![64, 2], GgmlType::Q8_0, 3),
        mk("blk.0.ffn_down.weight", vec![256, 2], GgmlType::Q4_K, 4),
        mk("blk.0.ffn_up.weight", vec![256], GgmlType::Q6_K, 5),
        mk("output.weight", vec![4, 2, 2], GgmlType::BF16, 6),
        mk("blk.0.attn_k.weight", vec![32, 3], GgmlType::Q4_1, 7),
    ]
}
