//! The `classifier` binary: parses the flags, calls [`classifier::run`] and prints the
//! seed's summary.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = classifier::ClassifierArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let report = classifier::run(&args)?;
    println!("{}", classifier::summary(&report));
    tracing::info!(
        fit_seconds = format!("{:.2}", report.fit_seconds),
        iterations = report.iterations,
        converged = report.converged,
        train_accuracy = format!("{:.4}", report.train_accuracy),
        "fitted LinearSVC"
    );
    Ok(())
}
