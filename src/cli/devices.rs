//! `longquant devices [--check] [--json]`: the CUDA devices this build can use and, with
//! `--check`, a self-test of the GPU kernels against the CPU (scripts/test-cuda.sh).
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Dequantize every supported block format on each device and compare with the CPU.
    #[arg(long)]
    check: bool,
}

#[cfg(not(feature = "cuda"))]
pub fn run(_a: Args, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::json!({"cuda": false, "devices": []}));
    } else {
        println!("cpu (this build has no CUDA support: rebuild with `--features cuda`)");
    }
    Ok(())
}

#[cfg(feature = "cuda")]
pub fn run(a: Args, json_out: bool) -> Result<()> {
    use anyhow::bail;
    use longquant::cuda::{gpu::Gpu, model::check_dequantize};
    use serde_json::json;
    longquant::cuda::gpu::probe_libraries()?;
    let count = cudarc_count()?;
    let mut devs = Vec::new();
    let mut failed = false;
    for i in 0..count {
        let gpu = Gpu::open(i)?;
        let (free, total) = gpu.mem_info()?;
        let mut checks = Vec::new();
        if a.check {
            for c in check_dequantize(i)? {
                failed |= c.differ != 0;
                checks.push(json!({
                    "format": format!("{:?}", c.format),
                    "values": c.values,
                    "differ": c.differ,
                    "worst": c.worst,
                }));
            }
        }
        devs.push(json!({
            "device": gpu.name,
            "multiprocessors": gpu.sms,
            "free_mib": free >> 20,
            "total_mib": total >> 20,
            "dequantize_check": checks,
        }));
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"cuda": true, "devices": devs}))?
        );
    } else {
        for d in &devs {
            println!(
                "{}: {} SMs, {} MiB free of {} MiB",
                d["device"].as_str().unwrap_or("?"),
                d["multiprocessors"],
                d["free_mib"],
                d["total_mib"]
            );
            for c in d["dequantize_check"].as_array().into_iter().flatten() {
                println!(
                    "  dequantize {:<7} {} values, {} differ from the CPU (worst {})",
                    c["format"].as_str().unwrap_or("?"),
                    c["values"],
                    c["differ"],
                    c["worst"]
                );
            }
        }
    }
    if failed {
        bail!("the GPU's dequantization differs from the CPU's");
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn cudarc_count() -> Result<usize> {
    Ok(longquant::cuda::gpu::device_count()?)
}
