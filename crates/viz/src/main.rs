//! The `viz` binary: parses the flags and calls [`viz::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = viz::VizArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    viz::run(&args)?;
    Ok(())
}
