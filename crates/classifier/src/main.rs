//! The `classifier` binary: parses the flags, calls [`classifier::run`] and prints the
//! reference's summary.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = classifier::ClassifierArgs::parse();
    vae_data::cli::init(None);
    let report = classifier::run(&args)?;
    println!("{}", classifier::summary(&report));
    tracing::info!(
        fit_seconds = format!("{:.2}", report.summary.fit_seconds),
        iterations = report.summary.iterations,
        converged = report.summary.converged,
        train_accuracy = format!("{:.4}", report.summary.train_accuracy),
        "fitted LinearSVC"
    );
    Ok(())
}
