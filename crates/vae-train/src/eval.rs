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
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use vae_data::run::EvalSummary;
use vae_data::{IMAGE_SIDE, SplitKind, load_split};
use vae_model::{CpuStep, Vae};

use crate::diagnostics::PosteriorStats;

/// Most latent codes decoded in one forward pass (images × samples), bounding memory: a
/// decode keeps about 0.75 MB of activations, so a pass peaks near 1.6 GB whatever `--k`.
const MAX_DECODES_PER_PASS: usize = 2048;

/// Command-line flags of `vae-eval`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(version, about = "Estimate the test-set negative log-likelihood with the importance-weighted bound")]
pub struct EvalArgs {
    /// Trained weights, e.g. runs/NAME/model.safetensors
    #[arg(long)]
    pub model: PathBuf,
    /// --data: the dataset directory
    #[command(flatten)]
    #[serde(flatten)]
    pub data: vae_data::cli::DataArgs,
    /// Run directory that receives eval.json
    #[arg(long)]
    pub out: PathBuf,
    /// Importance samples per image (k = 1 gives the ELBO); time grows linearly in k,
    /// memory does not: at most 2048 codes are decoded per pass (about 1.6 GB at peak),
    /// a large k in several passes per image
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub k: u32,
    /// Evaluate only the first N test images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub test_limit: Option<u32>,
    /// Images per forward pass (each decoded k times; fewer when k × N exceeds 2048)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// The likelihood the model was trained with (vae-train --likelihood; the weights do
    /// not record it): the bounds are log-densities only under continuous-bernoulli
    #[arg(long, value_enum, default_value_t = vae_model::Likelihood::Bernoulli)]
    pub likelihood: vae_model::Likelihood,
    /// Seed of the importance samples
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Arithmetic of the two wide layers' products on the CPU: f32, or bf16 (operands
    /// rounded to bfloat16, f32 accumulation; on AMX or AVX-512 BF16, refused without)
    #[arg(long, value_enum, default_value_t = vae_model::Precision::F32)]
    pub precision: vae_model::Precision,
    /// --device: where the model runs
    #[command(flatten)]
    #[serde(flatten)]
    pub device: vae_data::cli::DeviceArgs,
}

/// Estimated bounds, in nats per image, averaged over the evaluated images: what
/// `eval.json` holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    /// The figures other stages read.
    #[serde(flatten)]
    pub summary: EvalSummary,
    /// `−iwae`: the negative log-likelihood estimate (an upper bound on the true NLL).
    pub nll_estimate: f64,
    /// Variance across the test images of each dimension's posterior mean.
    pub posterior_mean_variance: Vec<f64>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The flags.
    pub args: EvalArgs,
}

/// Sums over the images of `x` of the ELBO, the `k`-sample IWAE bound, and the loss at
/// the posterior mean (BCE of the decoded mean + KL), decoding at most `max_decodes` codes
/// per pass (splitting the `k` samples when `k · B` is larger). Each pass draws its own
/// noise from `rng`, in the order of one `(k, B, latent)` array, so neither the draws nor
/// the result depend on the split, and memory does not grow with `k`.
fn batch_sums(
    vae: &Vae,
    x: &Tensor,
    k: usize,
    rng: &mut StdRng,
    max_decodes: usize,
    posterior: &mut PosteriorStats,
) -> anyhow::Result<(f64, f64, f64)> {
    let (b, dim) = (x.dim(0)?, vae.config().latent_dim);
    let (mu, logvar) = vae.encode(x)?;
    posterior.add(&mu.flatten_all()?.to_vec1()?, &logvar.flatten_all()?.to_vec1()?, dim);
    let at_mean = vae_model::VaeOutput { logits: vae.decode_logits(&mu)?, mu: mu.clone(), logvar: logvar.clone() };
    let at_mean = vae.loss_terms(&at_mean, x)?;
    let loss_at_mean = (at_mean.bce.to_scalar::<f32>()? + at_mean.kl.to_scalar::<f32>()?) as f64;
    let samples_per_pass = (max_decodes / b).clamp(1, k);
    let mut log_w = Vec::new();
    for start in (0..k).step_by(samples_per_pass) {
        let samples = samples_per_pass.min(k - start);
        let eps: Vec<f32> = (0..samples * b * dim).map(|_| rng.sample(StandardNormal)).collect();
        let chunk = Tensor::from_vec(eps, (samples, b, dim), x.device())?;
        // Detached: the weights are `Var`s, so a kept result would keep its whole graph
        // (every activation of the pass) alive.
        log_w.push(vae_model::log_importance_weights(vae, &mu, &logvar, x, &chunk)?.detach());
    }
    let bounds = vae_model::bounds_from_log_weights(&Tensor::cat(&log_w, 0)?)?;
    let sum = |t: &Tensor| -> anyhow::Result<f64> { Ok(t.sum_all()?.to_scalar::<f32>()? as f64) };
    Ok((sum(&bounds.elbo)?, sum(&bounds.iwae)?, loss_at_mean))
}

/// [`batch_sums`] through the CPU kernels, for the flattened images `pixels`: the same
/// noise, the same figures up to float rounding, in f64 from the decoder's outputs on.
fn cpu_batch_sums(
    step: &mut CpuStep,
    pixels: &[f32],
    k: usize,
    rng: &mut StdRng,
    max_decodes: usize,
    posterior: &mut PosteriorStats,
) -> anyhow::Result<(f64, f64, f64)> {
    let b = pixels.len() / (IMAGE_SIDE * IMAGE_SIDE);
    let (mu, logvar) = step.encode(pixels)?;
    let dim = mu.len() / b;
    posterior.add(&mu, &logvar, dim);
    let loss_at_mean = vae_model::posterior_kl(&mu, &logvar) - step.log_likelihoods(pixels, &mu)?.iter().sum::<f64>();
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let samples_per_pass = (max_decodes / b).clamp(1, k);
    let mut log_w: Vec<Vec<f64>> = vec![Vec::with_capacity(k); b];
    for start in (0..k).step_by(samples_per_pass) {
        let samples = samples_per_pass.min(k - start);
        // (samples, b, dim), drawn in the order of the candle path.
        let eps: Vec<f32> = (0..samples * b * dim).map(|_| rng.sample(StandardNormal)).collect();
        let rows = |r: usize| (r % b) * dim..(r % b + 1) * dim;
        let z = vae_model::sampled_codes(&mu, &logvar, &eps);
        let log_px_z = step.log_likelihoods(&pixels.repeat(samples), &z)?;
        for (r, log_px_z) in log_px_z.into_iter().enumerate() {
            let (z, e) = (&z[r * dim..(r + 1) * dim], &eps[r * dim..(r + 1) * dim]);
            let log_pz: f64 = z.iter().map(|z| -0.5 * (f64::from(z * z) + ln_2pi)).sum();
            let log_qz: f64 =
                e.iter().zip(&logvar[rows(r)]).map(|(e, lv)| -0.5 * (f64::from(e * e + lv) + ln_2pi)).sum();
            log_w[r % b].push(log_px_z + log_pz - log_qz);
        }
    }
    let (mut elbo, mut iwae) = (0.0, 0.0);
    for w in &log_w {
        let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        elbo += w.iter().sum::<f64>() / k as f64;
        iwae += max + (w.iter().map(|w| (w - max).exp()).sum::<f64>() / k as f64).ln();
    }
    Ok((elbo, iwae, loss_at_mean))
}

/// Evaluates the model and writes `eval.json`.
pub fn run(args: &EvalArgs) -> anyhow::Result<EvalReport> {
    let device = vae_model::device(&args.device.name)?;
    let (vae, varmap, _) =
        vae_model::load_vae(&args.model, &device).with_context(|| format!("loading {}", args.model.display()))?;
    let vae = vae.with_likelihood(args.likelihood);
    let mut cpu_step = CpuStep::on_device(vae.config(), &varmap, &device, args.precision)?;
    let mut test = load_split(&args.data.dir, SplitKind::Test).context("loading the test set")?;
    if let Some(n) = args.test_limit {
        test.truncate(n as usize);
    }
    ensure!(!test.is_empty(), "the test set in {} is empty", args.data.dir.display());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let k = args.k as usize;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let bar = vae_data::cli::progress_bar(test.len() as u64, "iwae", "images");
    let started = Instant::now();
    let (mut elbo, mut iwae, mut at_mean) = (0.0f64, 0.0f64, 0.0f64);
    let mut posterior = PosteriorStats::default();
    let indices: Vec<usize> = (0..test.len()).collect();
    let per_pass = (args.batch_size as usize).min((MAX_DECODES_PER_PASS / k).max(1));
    for batch in indices.chunks(per_pass) {
        let pixels = test.gather_f32(batch);
        let (batch_elbo, batch_iwae, batch_at_mean) = match cpu_step.as_mut() {
            Some(step) => cpu_batch_sums(step, &pixels, k, &mut rng, MAX_DECODES_PER_PASS, &mut posterior)?,
            None => {
                let x = Tensor::from_vec(pixels, (batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE), &device)?;
                batch_sums(&vae, &x, k, &mut rng, MAX_DECODES_PER_PASS, &mut posterior)?
            }
        };
        elbo += batch_elbo;
        iwae += batch_iwae;
        at_mean += batch_at_mean;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let n = test.len() as f64;
    ensure!(
        (elbo + iwae + at_mean).is_finite(),
        "the likelihood bounds of {} are not finite: the model diverged",
        args.model.display()
    );
    let summary = EvalSummary {
        k: args.k,
        images: test.len(),
        elbo: elbo / n,
        iwae: iwae / n,
        test_loss_at_mean: at_mean / n,
        kl_per_dimension: posterior.kl_per_dimension(),
        active_units: posterior.active_units(),
    };
    let report = EvalReport {
        summary,
        nll_estimate: -iwae / n,
        posterior_mean_variance: posterior.mean_variance(),
        seconds: started.elapsed().as_secs_f64(),
        args: args.clone(),
    };
    vae_data::write_atomic(
        &args.out.join(vae_data::run::file::EVAL),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Splitting the k samples over several passes gives the same bounds as one pass.
    #[test]
    fn bounds_do_not_depend_on_the_pass_size() {
        let device = Device::Cpu;
        let cfg = vae_model::VaeConfig::default();
        let varmap = candle_nn::VarMap::new();
        vae_model::init_varmap(&varmap, &cfg, 1, &device).unwrap();
        let vae = Vae::new(&cfg, candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let test = load_split(&data, SplitKind::Test).unwrap();
        let x = Tensor::from_vec(test.gather_f32(&[0, 1, 2]), (3, 1, IMAGE_SIDE, IMAGE_SIDE), &device).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let eps: Vec<f32> = (0..37 * 3 * 10).map(|_| rng.sample(StandardNormal)).collect();
        let eps = Tensor::from_vec(eps, (37, 3, 10), &device).unwrap();
        let sums = |max_decodes| {
            let mut stats = PosteriorStats::default();
            batch_sums(&vae, &x, 37, &mut StdRng::seed_from_u64(4), max_decodes, &mut stats)
        };
        let whole = sums(4096).unwrap();
        let reference = vae_model::likelihood_bounds(&vae, &x, &eps).unwrap();
        assert_eq!(whole.1, reference.iwae.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
        for max_decodes in [1, 2, 7, 30, 111] {
            let split = sums(max_decodes).unwrap();
            assert!(close(split.0, whole.0) && close(split.1, whole.1), "{max_decodes}: {split:?} vs {whole:?}");
            assert_eq!(split.2, whole.2, "the loss at the mean takes no samples");
        }
        // The CPU kernels' path: the same noise and figures, in passes of any size, and
        // the same posterior statistics.
        let mut step = CpuStep::new(&cfg, &varmap).unwrap();
        let pixels = test.gather_f32(&[0, 1, 2]);
        let (mut stats, mut cpu_stats) = (PosteriorStats::default(), PosteriorStats::default());
        batch_sums(&vae, &x, 37, &mut StdRng::seed_from_u64(4), 4096, &mut stats).unwrap();
        for max_decodes in [4096, 7] {
            let cpu =
                cpu_batch_sums(&mut step, &pixels, 37, &mut StdRng::seed_from_u64(4), max_decodes, &mut cpu_stats)
                    .unwrap();
            assert!(close(cpu.0, whole.0) && close(cpu.1, whole.1) && close(cpu.2, whole.2), "{cpu:?} vs {whole:?}");
        }
        let kl = |s: &PosteriorStats| s.kl_per_dimension();
        assert!(kl(&stats).iter().zip(kl(&cpu_stats)).all(|(a, b)| (a - b).abs() <= 1e-4 * a.abs().max(1e-3)));
    }
}
