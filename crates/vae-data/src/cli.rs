//! Pieces every stage binary shares (the `cli` feature): start-up (logging, allocator,
//! thread count, subnormal numbers), the progress-bar style, and the flag groups several
//! stages take.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

/// Sets up a stage binary before it does any work: with `threads`, the worker threads of
/// the matrix kernels (candle's GEMM and rayon read `RAYON_NUM_THREADS`); glibc's
/// allocator kept from returning large buffers to the kernel between steps (every step
/// frees and reallocates tens of MB of activations, which would otherwise be unmapped
/// and faulted in again: measured here, that alone halved the step time); subnormal
/// numbers flushed to zero on the main thread and rayon's workers ([`flush_subnormals`]);
/// and logs through `tracing` to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init(threads: Option<u32>) {
    if let Some(threads) = threads {
        // SAFETY: called at start-up, before any other thread runs.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    flush_subnormals();
    // The global pool, built before anything else starts it, with every worker flushing
    // too; its size still comes from RAYON_NUM_THREADS.
    let _ = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_subnormals()).build_global();
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

/// Sets this thread's floating-point control to treat subnormal inputs as zero and flush
/// subnormal results to zero (x86-64 MXCSR's DAZ and FTZ bits; elsewhere nothing), as
/// TensorFlow does on CPUs. Training produces many subnormal values (gradients and
/// moments of weights a ReLU cuts off, decaying towards zero), and Intel cores compute on
/// those through microcode assists: on a 2-core Intel Xeon every batch-128 epoch after the
/// first took 40 % longer than the first (57 s, then 80 s); with both bits set it stays at
/// 57 s. Values that small (below 1.2e-38) do not change the model: two epochs gave the
/// same trained bytes with Adam's subnormal moments set to zero.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FLUSH_TO_ZERO: u32 = 1 << 15;
        const DENORMALS_ARE_ZERO: u32 = 1 << 6;
        let mut csr = 0u32;
        // SAFETY: stmxcsr stores the 32-bit control register into `csr`; ldmxcsr loads it
        // back with two mode bits set, which only changes how later f32/f64 vector and
        // scalar operations on this thread treat subnormal numbers.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FLUSH_TO_ZERO | DENORMALS_ARE_ZERO;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
    }
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

#[cfg(test)]
mod tests {
    /// Half the smallest normal f32 is subnormal: kept by default, zero once flushed; the
    /// setting is the thread's own.
    #[test]
    fn flushing_subnormals_is_per_thread() {
        let halve = || std::hint::black_box(f32::MIN_POSITIVE) / std::hint::black_box(2.0f32);
        let default = std::thread::spawn(halve).join().unwrap();
        assert!(default > 0.0 && default < f32::MIN_POSITIVE, "{default:e}");
        let flushed = std::thread::spawn(move || {
            super::flush_subnormals();
            halve()
        });
        let expected = if cfg!(target_arch = "x86_64") { 0.0 } else { default };
        assert_eq!(flushed.join().unwrap(), expected);
    }
}
