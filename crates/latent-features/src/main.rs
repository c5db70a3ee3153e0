//! The `latent-features` binary: parses the flags and calls [`latent_features::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = latent_features::LatentArgs::parse();
    vae_data::cli::init(None);
    latent_features::run(&args)
}
