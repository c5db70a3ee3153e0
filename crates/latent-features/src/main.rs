//! The `latent-features` binary: parses the flags and calls [`latent_features::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = latent_features::LatentArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    latent_features::run(&args)
}
