//! `--device cpu|cuda[:N]`: which backend evaluates a model.
#[cfg(not(feature = "cuda"))]
use anyhow::bail;
use anyhow::Context;
use longquant::formats::gguf::GgufFile;
use longquant::model::{Evaluator, Model};
use std::path::Path;

/// A parsed `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The embedded CPU forward pass.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// clap's parser for `--device`.
pub fn parse(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => Err(format!("`{s}` is not a device (cpu, cuda or cuda:N)")),
        },
    }
}

/// Loads the model in `file` on `device`.
pub fn load<'a>(
    file: &'a GgufFile,
    path: &Path,
    device: Device,
) -> anyhow::Result<Box<dyn Evaluator + 'a>> {
    match device {
        Device::Cpu => Ok(Box::new(
            Model::load(file).with_context(|| format!("loading model {}", path.display()))?,
        )),
        Device::Cuda(n) => load_cuda(file, path, n),
    }
}

#[cfg(feature = "cuda")]
fn load_cuda<'a>(
    file: &'a GgufFile,
    path: &Path,
    n: usize,
) -> anyhow::Result<Box<dyn Evaluator + 'a>> {
    Ok(Box::new(
        longquant::cuda::CudaModel::load(file, n)
            .with_context(|| format!("loading model {} on cuda:{n}", path.display()))?,
    ))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda<'a>(
    _file: &'a GgufFile,
    path: &Path,
    n: usize,
) -> anyhow::Result<Box<dyn Evaluator + 'a>> {
    bail!(
        "cannot load {} on cuda:{n}: this longquant was built without CUDA support \
         (rebuild with `cargo build --release --features cuda`)",
        path.display()
    )
}
