//! The `vae-eval` binary: parses the flags and calls [`vae_train::eval::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = vae_train::eval::EvalArgs::parse();
    vae_data::cli::init(None);
    let report = vae_train::eval::run(&args)?;
    let r = &report.summary;
    println!(
        "{} test images, k = {}: ELBO {:.2} nats, IWAE bound {:.2} nats → NLL ≤ {:.2} nats; loss at the posterior mean {:.2} ({:.1} s)",
        r.images, r.k, r.elbo, r.iwae, report.nll_estimate, r.test_loss_at_mean, report.seconds
    );
    let kl: Vec<String> = r.kl_per_dimension.iter().map(|k| format!("{k:.2}")).collect();
    println!("active units: {} of {}; KL per dimension: {}", r.active_units, kl.len(), kl.join(" "));
    Ok(())
}
