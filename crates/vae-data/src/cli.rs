//! Pieces every stage binary shares (the `cli` feature): start-up (logging, allocator,
//! thread count), the progress-bar style, and the flag groups several stages take.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

/// Sets up a stage binary before it does any work: with `threads`, the worker threads of
/// the matrix kernels (candle's GEMM and rayon read `RAYON_NUM_THREADS`); glibc's
/// allocator kept from returning large buffers to the kernel between steps (every step
/// frees and reallocates tens of MB of activations, which would otherwise be unmapped
/// and faulted in again: measured here, that alone halved the step time); and logs
/// through `tracing` to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init(threads: Option<u32>) {
    if let Some(threads) = threads {
        // SAFETY: called at start-up, before any other thread runs.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// A progress bar over `len` items counted in `unit` (e.g. `images`), labelled `prefix`;
/// its message, if set, follows the count.
pub fn progress_bar(len: u64, prefix: impl Into<String>, unit: &str) -> ProgressBar {
    let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}{{msg}} ({{per_sec}}, eta {{eta}})");
    let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_prefix(prefix.into()).with_style(style.progress_chars("=> "))
}

/// The dataset flag of every stage that reads images.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DataArgs {
    /// Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (and optionally a
    /// SHA256SUMS manifest of their decompressed bytes, which is then verified)
    #[arg(long = "data", value_name = "DATA", default_value = "data/mnist")]
    #[serde(rename = "data")]
    pub dir: PathBuf,
}

/// The device flag of every stage that runs the model.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, or cuda / cuda:N (needs a build with `--features cuda`)
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    #[serde(rename = "device")]
    pub name: String,
}

/// The flags that take only the first images of each split (quick runs, tests).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LimitArgs {
    /// Use only the first N training images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub train_limit: Option<u32>,
    /// Use only the first N test images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub test_limit: Option<u32>,
}
