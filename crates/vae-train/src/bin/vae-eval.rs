//! The `vae-eval` binary: parses the flags and calls [`vae_train::eval::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    vae_train::tune_allocator();
    let args = vae_train::eval::EvalArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let r = vae_train::eval::run(&args)?;
    println!(
        "{} test images, k = {}: ELBO {:.2} nats, IWAE bound {:.2} nats → NLL ≤ {:.2} nats; loss at the posterior mean {:.2} ({:.1} s)",
        r.images, r.k, r.elbo, r.iwae, r.nll_estimate, r.test_loss_at_mean, r.seconds
    );
    let kl: Vec<String> = r.kl_per_dimension.iter().map(|k| format!("{k:.2}")).collect();
    println!("active units: {} of {}; KL per dimension: {}", r.active_units, kl.len(), kl.join(" "));
    Ok(())
}
