//! The `vae-train` binary: parses the flags and calls [`vae_train::run`].

use clap::Parser;
use vae_train::TrainArgs;

fn main() -> anyhow::Result<()> {
    let args = TrainArgs::parse();
    vae_data::cli::init(args.threads);
    vae_train::run(&args)?;
    Ok(())
}
