//! The `vae-train` binary: parses the flags and calls [`vae_train::run`].

use clap::Parser;
use vae_train::TrainArgs;

fn main() -> anyhow::Result<()> {
    vae_train::tune_allocator();
    let args = TrainArgs::parse();
    if let Some(threads) = args.threads {
        // SAFETY: nothing else runs yet; candle's GEMM reads this variable for its thread count.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    tracing_subscriber::fmt().with_env_filter(env_filter()).with_writer(std::io::stderr).init();
    vae_train::run(&args)?;
    Ok(())
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
}
