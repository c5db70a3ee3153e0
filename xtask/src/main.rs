//! `cargo xtask`: the project's commands.
//!
//! - `cargo xtask pipeline`: train → latent features → classifier → figures → report.
//! - `cargo xtask ci`: formatting, lints and tests, as CI runs them.
//! - `cargo xtask bench`: every crate's bench (`vae-bench`'s whole step and peaks,
//!   `vae-model`'s layers and encoder, the classifier's fit, t-SNE), or with
//!   `--pytorch PYTHON` our step and encoder beside PyTorch's.
//! - `cargo xtask study`: the objectives side by side, tabled in `docs/study.md`.
//! - `cargo xtask compare RUN...`: runs (seeds of one recipe, or several recipes) against the published figures.
//! - `cargo xtask emulate`: the kernels' tests and a short training run on an emulated CPU
//!   without AVX-512 (QEMU), checking the path the same binary takes on AVX2 machines.

mod bench;
mod compare;
mod emulate;
mod html;
mod pipeline;
mod report;
mod study;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project commands for the VAE toolkit")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every stage (vae-train, latent-features, classifier, viz) and write report.md
    Pipeline(Box<pipeline::PipelineArgs>),
    /// Check formatting, run clippy with warnings denied, run the test suite, then (where
    /// QEMU's qemu-x86_64 is installed) `emulate`
    Ci,
    /// Measure the FMA and GEMM peaks, the training step, its per-layer costs, the
    /// encoder, the classifier and t-SNE; or, with --pytorch, our step beside PyTorch's
    Bench(bench::BenchArgs),
    /// Train and analyse the VAE, β-VAE (β = 4), IWAE (K = 5) and continuous-Bernoulli
    /// VAE under one budget and seed, and table them in docs/study.md
    Study(study::StudyArgs),
    /// Table runs of one recipe (e.g. three seeds) against the published reference: each
    /// published checkpoint's losses as mean ± standard deviation (min–max), both conventions,
    /// the later stages' figures, and each run's final figures on a line of its own
    Compare(compare::CompareArgs),
    /// Run the kernels' tests and a short training run on an emulated CPU without
    /// AVX-512 (QEMU's user mode, an AMD Zen 3 by default): the AVX2 kernels must be the
    /// ones chosen, pass, and train to this machine's losses; bf16 must be refused
    Emulate(emulate::EmulateArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Pipeline(args) => pipeline::run(&args),
        Task::Ci => ci(),
        Task::Bench(args) => bench::run(&args),
        Task::Study(args) => study::run(&args).map(|_| ()),
        Task::Compare(args) => compare::run(&args),
        Task::Emulate(args) => emulate::run(&args),
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where `cargo build --release` puts the binaries (`CARGO_TARGET_DIR` respected).
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
        .join("release")
}

/// The cargo that runs us (`CARGO`), or `cargo` from the path.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

fn ci() -> anyhow::Result<()> {
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--", "--check"],
        &["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"],
        &["test", "--workspace", "--release"],
    ];
    for step in steps {
        eprintln!("$ cargo {}", step.join(" "));
        // The slow end-to-end tests run here (a plain `cargo test` skips them).
        let status = cargo()
            .args(step)
            .env("RUN_SLOW_TESTS", "1")
            .status()
            .with_context(|| format!("running cargo {}", step[0]))?;
        if !status.success() {
            bail!("cargo {} failed ({status})", step.join(" "));
        }
    }
    let qemu = Path::new(emulate::DEFAULT_QEMU);
    if let Some(why) = emulate::unavailable(qemu) {
        eprintln!("skipped: the emulated AVX2 CPU (cargo xtask emulate): {why}");
        return Ok(());
    }
    eprintln!("$ cargo xtask emulate");
    emulate::check(qemu, emulate::DEFAULT_CPU)
}
