//! Bench binary: quantize every 2-D F32 tensor of a GGUF to one type ("pure", as
//! `llama-quantize --pure` does) and write the result as a GGUF, end to end (mmap read, quantize
//! on N threads, streaming write, fsync + rename), timing the whole job. This is the
//! like-for-like counterpart of timing `llama_model_quantize` on the same file; see
//! `benches/llamacpp/quantize_side_by_side.py`, which runs both and writes the table in
//! BENCHMARKS.md.
//!
//! Usage: `cargo bench --bench quantize_throughput -- IN.gguf OUT.gguf TYPE THREADS`
//! (prints one JSON line: type, threads, weights, seconds, mweights_per_s).
use longquant::export::block_format;
use longquant::formats::gguf::{GgufFile, GgufWriter, TensorSpec, WriteOptions};
use longquant::formats::GgmlType;
use longquant::quants::block::cast_blocks;
use longquant::quants::tensor::quantize_tensor;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() != 4 {
        eprintln!("usage: quantize_throughput IN.gguf OUT.gguf TYPE THREADS");
        return Ok(()); // a bare `cargo bench` run must not fail
    }
    let (input, output, type_name, threads) =
        (&args[0], &args[1], &args[2], args[3].parse::<usize>()?);
    let target =
        GgmlType::from_name(type_name).ok_or_else(|| format!("unknown type {type_name}"))?;
    let fmt = block_format(target).ok_or_else(|| format!("cannot quantize to {type_name}"))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;

    let start = Instant::now();
    let file = GgufFile::open(input)?;
    let mut specs = Vec::new();
    let mut weights: u64 = 0;
    for t in file.tensors() {
        let quantize = t.dims.len() >= 2 && t.ggml_type == GgmlType::F32;
        let ty = if quantize { target } else { t.ggml_type };
        if quantize {
            weights += t.n_elements();
        }
        specs.push(TensorSpec::new(t.name.clone(), t.dims.clone(), ty));
    }
    // Metadata is carried over unchanged: this file exists only to be timed.
    let mut writer = GgufWriter::create(
        output.as_ref(),
        file.metadata(),
        specs,
        WriteOptions { overwrite: true },
    )?;
    let mut src = Vec::new();
    let mut dst = Vec::new();
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        if t.dims.len() >= 2 && t.ggml_type == GgmlType::F32 {
            // GGUF tensor data is 32-byte aligned in a page-aligned map, so on a little-endian
            // host the F32 weights are borrowed in place; copy only when that is not so.
            let values: &[f32] = match cast_blocks::<f32>(bytes) {
                Some(v) if cfg!(target_endian = "little") => v,
                _ => {
                    src.clear();
                    src.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                    &src
                }
            };
            let row_len = t.dims[0] as usize;
            let row_size = fmt
                .row_size(row_len)
                .ok_or("row length not a multiple of the block size")?;
            dst.resize(values.len() / row_len * row_size, 0u8);
            pool.install(|| quantize_tensor(fmt, values, row_len, None, &mut dst))?;
            writer.write_tensor_data(&dst)?;
        } else {
            writer.write_tensor_data(bytes)?;
        }
    }
    writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"impl\":\"longquant\",\"type\":\"{type_name}\",\"threads\":{threads},\"weights\":{weights},\"seconds\":{secs:.4},\"mweights_per_s\":{:.2}}}",
        weights as f64 / secs / 1e6
    );
    Ok(())
}
