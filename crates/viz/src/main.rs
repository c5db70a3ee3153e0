//! The `viz` binary: parses the flags and calls [`viz::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = viz::VizArgs::parse();
    vae_data::cli::init(None);
    viz::run(&args)?;
    Ok(())
}
