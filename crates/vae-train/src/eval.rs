//! `vae-eval`: the test-set log-likelihood of a trained model, estimated with the
//! importance-weighted bound (Burda et al., 2015), written to `eval.json`.
//!
//! The ELBO is a loose lower bound on `log p(x)`; the k-sample IWAE bound is tighter and
//! is the figure VAE papers compare. Both are reported, in nats per image.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use candle_core::Tensor;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use vae_data::{IMAGE_SIDE, SplitKind, load_split};

/// Most latent codes decoded in one forward pass (k × images), bounding memory.
const MAX_DECODES_PER_PASS: usize = 4096;

/// Command-line flags of `vae-eval`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(version, about = "Estimate the test-set negative log-likelihood with the importance-weighted bound")]
pub struct EvalArgs {
    /// Trained weights, e.g. runs/NAME/model.safetensors
    #[arg(long)]
    pub model: PathBuf,
    /// Directory with the IDX files (raw or .gz)
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Run directory that receives eval.json
    #[arg(long)]
    pub out: PathBuf,
    /// Importance samples per image (k = 1 gives the ELBO); cost grows linearly in k
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: u32,
    /// Evaluate only the first N test images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub test_limit: Option<u32>,
    /// Images per forward pass (each decoded k times; fewer when k × N exceeds 4096)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Seed of the importance samples
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the model runs: cpu, or cuda / cuda:N (needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Estimated bounds, in nats per image, averaged over the evaluated images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// Importance samples per image.
    pub k: u32,
    /// Test images evaluated.
    pub images: usize,
    /// Mean ELBO (k = 1 bound on log p(x)).
    pub elbo: f64,
    /// Mean k-sample importance-weighted bound on log p(x).
    pub iwae: f64,
    /// `−iwae`: the negative log-likelihood estimate (an upper bound on the true NLL).
    pub nll_estimate: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The flags.
    pub args: EvalArgs,
}

/// Evaluates the model and writes `eval.json`.
pub fn run(args: &EvalArgs) -> anyhow::Result<EvalReport> {
    let device = vae_model::device(&args.device)?;
    let (vae, _, _) =
        vae_model::load_vae(&args.model, &device).with_context(|| format!("loading {}", args.model.display()))?;
    let mut test = load_split(&args.data, SplitKind::Test).context("loading the test set")?;
    if let Some(n) = args.test_limit {
        test.truncate(n as usize);
    }
    ensure!(!test.is_empty(), "the test set in {} is empty", args.data.display());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let latent = vae.config().latent_dim;
    let k = args.k as usize;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let bar = ProgressBar::new(test.len() as u64).with_prefix("iwae");
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images ({per_sec}, eta {eta})")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let started = Instant::now();
    let (mut elbo, mut iwae) = (0.0f64, 0.0f64);
    let indices: Vec<usize> = (0..test.len()).collect();
    // Each pass decodes k × images; cap that so a large --k cannot exhaust memory.
    let per_pass = (args.batch_size as usize).min((MAX_DECODES_PER_PASS / k).max(1));
    for batch in indices.chunks(per_pass) {
        let x = Tensor::from_vec(test.gather_f32(batch), (batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE), &device)?;
        let eps: Vec<f32> = (0..k * batch.len() * latent).map(|_| rng.sample(StandardNormal)).collect();
        let eps = Tensor::from_vec(eps, (k, batch.len(), latent), &device)?;
        let bounds = vae_model::likelihood_bounds(&vae, &x, &eps)?;
        elbo += bounds.elbo.sum_all()?.to_scalar::<f32>()? as f64;
        iwae += bounds.iwae.sum_all()?.to_scalar::<f32>()? as f64;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let n = test.len() as f64;
    ensure!((elbo + iwae).is_finite(), "the likelihood bounds are not finite: is the model diverged?");
    let report = EvalReport {
        k: args.k,
        images: test.len(),
        elbo: elbo / n,
        iwae: iwae / n,
        nll_estimate: -iwae / n,
        seconds: started.elapsed().as_secs_f64(),
        args: args.clone(),
    };
    vae_data::write_atomic(&args.out.join("eval.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}
