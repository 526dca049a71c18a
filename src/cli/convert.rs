//! `longquant convert` (being written).
#[derive(clap::Args)]
pub struct Args {}
pub fn run(_a: Args, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("convert is not built yet")
}
