//! `--device cpu|cuda[:N]`: which backend evaluates a model.
use anyhow::Context;
use longquant::formats::gguf::GgufFile;
pub use longquant::model::Device;
use longquant::model::{load_on, Evaluator};
use std::path::Path;

/// clap's parser for `--device`.
pub fn parse(s: &str) -> Result<Device, String> {
    s.parse()
}

/// Loads the model in `file` (read from `path`) on `device`.
pub fn load<'a>(
    file: &'a GgufFile,
    path: &Path,
    device: Device,
) -> anyhow::Result<Box<dyn Evaluator + 'a>> {
    load_on(file, device).with_context(|| format!("loading model {} on {device}", path.display()))
}
