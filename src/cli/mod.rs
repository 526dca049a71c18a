//! Subcommands. Each module defines `Args` and `run`; this file only dispatches and maps errors
//! to exit codes.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod cache;
mod compare;
mod convert;
mod device;
mod devices;
mod export_hf;
mod imatrix;
mod inspect;
mod logits;
mod perplexity;
mod quantize;
mod recall;
mod sweep;

/// Convert Hugging Face Llama checkpoints to GGUF, quantize them, and prove the result is still good.
#[derive(Parser)]
#[command(name = "longquant", version, about)]
struct Cli {
    /// Print one JSON document on stdout instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a .gguf, .safetensors or Hugging Face folder holds.
    Inspect(inspect::Args),
    /// Convert a Hugging Face checkpoint to a (quantized) GGUF in one pass.
    Convert(convert::Args),
    /// Requantize a GGUF to another type with llama-quantize's mixes.
    Quantize(quantize::Args),
    /// Export a llama GGUF to a Hugging Face folder (safetensors, config, tokenizer).
    #[command(name = "export-hf")]
    ExportHf(export_hf::Args),
    /// Perplexity of a GGUF model on a text, with llama.cpp's method.
    Perplexity(perplexity::Args),
    /// Logits of the embedded forward pass for a prompt (top-k per position; --json adds the last position's logits).
    Logits(logits::Args),
    /// KL divergence and agreement of a model against a base model (llama.cpp's --kl-divergence statistics), in lockstep.
    Compare(compare::Args),
    /// Long-context recall: JSON key-value retrieval accuracy per prompt length × key depth.
    Recall(recall::Args),
    /// Collect an importance matrix (llama-imatrix's method and file formats) for quantize --imatrix.
    Imatrix(imatrix::Args),
    /// Make several quantization levels, compare each with the unquantized reference, tabulate, plot and recommend.
    Sweep(sweep::Args),
    /// The CUDA devices this build can use (--check: self-test of the GPU kernels).
    Devices(devices::Args),
    /// Prompt and generation speed at context depths (llama-bench's pp/tg tests).
    Bench(bench::Args),
}

/// Exit codes: distinct for bad input, I/O failure and refusals for safety, so scripts can tell them apart.
pub mod exit {
    /// Input was invalid (corrupt file, bad arguments, unsupported model).
    pub const INVALID_INPUT: u8 = 2;
    /// Reading or writing failed (disk full, permissions, missing file).
    pub const IO: u8 = 3;
    /// Refused for safety (output exists without --force, input == output, pickle checkpoint).
    pub const REFUSED: u8 = 4;
    /// Cancelled by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

pub fn main() -> ExitCode {
    let cli = Cli::parse_from(cache::rewrite_short_flags(std::env::args_os()));
    // Ctrl-C/SIGTERM never leave a temporary output behind: the streaming commands stop
    // cooperatively (they check between slices and unwind, removing their temporaries); every
    // other command removes the temporaries it has open and exits at once.
    install_interrupt_handler(matches!(
        cli.command,
        Command::Convert(_) | Command::Quantize(_) | Command::ExportHf(_)
    ));
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a, cli.json),
        Command::Convert(a) => convert::run(a, cli.json),
        Command::Quantize(a) => quantize::run(a, cli.json),
        Command::Perplexity(a) => perplexity::run(a, cli.json),
        Command::Logits(a) => logits::run(a, cli.json),
        Command::Compare(a) => compare::run(a, cli.json),
        Command::Recall(a) => recall::run(a, cli.json),
        Command::Sweep(a) => sweep::run(a, cli.json),
        Command::Imatrix(a) => imatrix::run(a, cli.json),
        Command::ExportHf(a) => export_hf::run(a, cli.json),
        Command::Devices(a) => devices::run(a, cli.json),
        Command::Bench(a) => bench::run(a, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(classify(&err))
        }
    }
}

/// How long a cooperative job may take to reach its next check after a stop request before it
/// is stopped anyway (its temporaries removed first).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes this process's uncommitted temporary outputs and exits with [`exit::INTERRUPTED`].
fn exit_now() -> ! {
    longquant::formats::atomic::remove_pending();
    std::process::exit(i32::from(exit::INTERRUPTED));
}

/// Cooperative commands: the first signal asks the job to stop at its next check (it cleans up
/// and exits 130); if it has not within [`STOP_GRACE`], or at a second signal, the process
/// removes its temporaries and exits. Other commands do that at the first signal.
fn install_interrupt_handler(cooperative: bool) {
    let result = ctrlc::set_handler(move || {
        if !cooperative || longquant::interrupt::requested() {
            exit_now();
        }
        longquant::interrupt::request();
        eprintln!("\ninterrupt: stopping and removing temporary files (again to quit at once)");
        std::thread::spawn(|| {
            std::thread::sleep(STOP_GRACE);
            eprintln!("interrupt: the job did not stop within {STOP_GRACE:?}; exiting");
            exit_now();
        });
    });
    if let Err(e) = result {
        eprintln!("warning: cannot install the Ctrl-C handler ({e}); an interrupted job may leave temporary files");
    }
}

/// Pick an exit code from the root cause of an error chain.
fn classify(err: &anyhow::Error) -> u8 {
    use longquant::formats::ErrorKind;
    if longquant::interrupt::requested() {
        return exit::INTERRUPTED;
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<longquant::formats::Error>() {
            return match e.kind {
                ErrorKind::Io { .. } => exit::IO,
                ErrorKind::PickleRefused { .. } => exit::REFUSED,
                _ => exit::INVALID_INPUT,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return exit::IO;
        }
        if cause.downcast_ref::<longquant::Refusal>().is_some() {
            return exit::REFUSED;
        }
    }
    exit::INVALID_INPUT
}
