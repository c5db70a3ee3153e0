//! `vae-train`: trains the reference's VAE on an MNIST-style dataset.
//!
//! Reproducible (every random choice comes from `--seed`: the initial weights, the
//! shuffle of each epoch, the reparameterisation noise) and resumable (a checkpoint
//! after every epoch holds the weights, Adam's moments and step, and the history; the
//! random streams are derived from the seed and the epoch, so a resumed run ends with
//! the same bytes as an uninterrupted one).
//!
//! Outputs in the run directory, each written atomically: `model.safetensors`,
//! `history.npy`, `history.json`, `samples.safetensors`, `checkpoint.safetensors`,
//! `config.json`.

pub mod adam;
mod args;
mod checkpoint;
pub mod diagnostics;
pub mod ema;
mod error;
pub mod eval;
mod history;
pub mod schedule;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::StandardNormal;
pub use vae_data::run::SAMPLE_COUNT;
use vae_data::run::{Machine, TrainConfigSummary, file};
use vae_data::{IMAGE_SIDE, Split, SplitKind, load_split};
use vae_model::{Vae, VaeConfig, init_varmap, save_tensors};

use adam::{Adam, AdamConfig, named_vars};
pub use args::{DEFAULT_LR, TrainArgs};
use checkpoint::{Fingerprint, restore_checkpoint, save_checkpoint};
use ema::Ema;
pub use error::{Result, TrainError};
pub use history::EpochLosses;
use schedule::{KlPlan, LrPlan};
pub use vae_data::run::EpochRecord;
use vae_model::CpuStep;

/// Number of test images reconstructed after every epoch.
pub const RECONSTRUCTION_COUNT: usize = 16;
/// Images per forward pass when evaluating the test set.
const EVAL_BATCH: usize = 500;

/// Independent random streams, each seeded from (`--seed`, stream, epoch).
#[derive(Clone, Copy)]
enum Stream {
    Shuffle = 1,
    TrainNoise = 2,
    TestNoise = 3,
    Samples = 4,
}

fn rng(seed: u64, stream: Stream, epoch: u32) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(stream as u64).to_le_bytes());
    key[16..20].copy_from_slice(&epoch.to_le_bytes());
    StdRng::from_seed(key)
}

fn normal_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample(StandardNormal)).collect()
}

fn normal_tensor(rng: &mut StdRng, shape: (usize, usize), device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(normal_values(rng, shape.0 * shape.1), shape, device)
}

fn images_tensor(split: &Split, indices: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(split.gather_f32(indices), (indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE), device)
}

/// The file names of a run directory.
pub struct RunFiles {
    dir: PathBuf,
}

impl RunFiles {
    /// The files of run directory `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
    /// Path of a file in the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Codes the decoder may hold in one step under `--iw-samples` (batch × K). A decoded
/// code adds about 0.27 MB to the peak resident memory, an image of a plain step about
/// 0.59 MB (peak resident memory of a 2,048-image epoch, AMD EPYC Zen 4, 2026-12-06: batch
/// 256 × K 8 1.56 GB and batch 128 × K 16 1.51 GB against 1.52 GB for a plain batch of
/// 1024, the `--batch-size` bound), so the default batch of 256 takes K up to 8.
const MAX_DECODED_CODES: u32 = 2048;

/// Trains as `args` say; returns the history of all epochs (those resumed included).
pub fn run(args: &TrainArgs) -> anyhow::Result<Vec<EpochRecord>> {
    let args = &args.resolved();
    let device = vae_model::device(&args.device.name)?;
    let files = RunFiles::new(&args.out);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating run directory {}", args.out.display()))?;
    ensure!(args.out.is_dir(), "{} is not a directory", args.out.display());

    let mut train = load_split(&args.data.dir, SplitKind::Train).context("loading the training set")?;
    let mut test = load_split(&args.data.dir, SplitKind::Test).context("loading the test set")?;
    if let Some(n) = args.limits.train_limit {
        train.truncate(n as usize);
    }
    if let Some(n) = args.limits.test_limit {
        test.truncate(n as usize);
    }
    ensure!(!train.is_empty() && !test.is_empty(), "the dataset in {} holds no images", args.data.dir.display());

    // In u64: a caller of this library, unlike the CLI, may pass any u32 for either.
    let largest_batch = args.batch_size.max(args.initial_batches().map_or(0, |(_, size)| size));
    let codes = u64::from(largest_batch) * u64::from(args.iw_samples);
    ensure!(
        codes <= u64::from(MAX_DECODED_CODES),
        "batch size {largest_batch} × --iw-samples {} decodes {codes} codes per step; at most {MAX_DECODED_CODES} fit the step's memory bound",
        args.iw_samples,
    );
    let cfg = VaeConfig { latent_dim: args.latent_dim as usize, likelihood: args.likelihood, ..VaeConfig::default() };
    let fingerprint = Fingerprint {
        batch_size: args.batch_size,
        initial_batches: args.initial_batches(),
        lr: args.lr_plan(train.len())?,
        kl: args.kl_plan(train.len()),
        ema: args.ema_decay(),
        iw_samples: args.iw_samples,
        seed: args.seed,
        precision: args.precision,
        train_images: train.len(),
        test_images: test.len(),
        model: cfg.clone(),
        inputs: [train.checksums.clone(), test.checksums.clone()].concat(),
    };

    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, args.seed, &device)?;
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut adam = Adam::new(named_vars(&varmap)?, AdamConfig { lr: args.lr, ..AdamConfig::default() });
    let mut ema = args.ema_decay().map(|decay| Ema::new(decay, &sorted_vars(&varmap)?)).transpose()?;
    // `--autograd` conflicts with `--precision` (clap), so it always trains in f32.
    let mut cpu_step = if args.autograd { None } else { CpuStep::on_device(&cfg, &varmap, &device, args.precision)? };

    let checkpoint = files.path(file::CHECKPOINT);
    let mut history = Vec::new();
    let mut samples = HashMap::new();
    if args.resume && checkpoint.exists() {
        let state = TrainState { varmap: &varmap, adam: &mut adam, ema: ema.as_mut() };
        (history, samples) = restore_checkpoint(&checkpoint, &fingerprint, state, &device).with_context(|| {
            format!("{} cannot be resumed; remove it to train again from the start", checkpoint.display())
        })?;
        tracing::info!(epochs_done = history.len(), "resumed from {}", checkpoint.display());
    }
    // Only now: a refused resume must leave the run's recorded configuration alone.
    write_config(&files, args, &fingerprint)?;
    let sample_z = normal_tensor(&mut rng(args.seed, Stream::Samples, 0), (SAMPLE_COUNT, cfg.latent_dim), &device)?;
    let recon_indices: Vec<usize> = (0..RECONSTRUCTION_COUNT.min(test.len())).collect();
    let originals = images_tensor(&test, &recon_indices, &device)?;
    samples.insert("z".to_string(), sample_z.clone());
    samples.insert("originals".to_string(), originals.clone());
    if history.is_empty() {
        snapshot(&vae, &sample_z, &originals, 0, &mut samples)?;
    }

    let plans = (&fingerprint.lr, &fingerprint.kl);
    let epochs_resumed = history.len();
    for epoch in history.len() as u32..args.epochs {
        let started = Instant::now();
        let state = TrainState { varmap: &varmap, adam: &mut adam, ema: ema.as_mut() };
        let (train_bce, train_kl) = train_epoch(&vae, state, plans, cpu_step.as_mut(), &train, args, epoch, &device)?;
        let (test_sampled, test_at_mean) = with_eval_weights(&varmap, ema.as_ref(), || {
            evaluate(&vae, cpu_step.as_mut(), &test, (args.seed, epoch), &device)
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let losses = history::EpochLosses { train: (train_bce, train_kl), test: test_sampled, test_at_mean };
        let record = losses.record(epoch, seconds, train.len() + test.len());
        tracing::info!("{record}");
        history.push(record);
        with_eval_weights(&varmap, ema.as_ref(), || {
            snapshot(&vae, &sample_z, &originals, epoch + 1, &mut samples)?;
            write_outputs(&files, &varmap, &samples, &history)
        })?;
        // The checkpoint is written last: it is the commit point of the epoch.
        let state = TrainState { varmap: &varmap, adam: &mut adam, ema: ema.as_mut() };
        save_checkpoint(&checkpoint, &fingerprint, state, &history, &samples)?;
    }
    if history.len() == epochs_resumed && epochs_resumed > 0 {
        // Nothing left to train: the outputs may have been damaged or removed since, and
        // the checkpoint holds everything they are made of.
        with_eval_weights(&varmap, ema.as_ref(), || write_outputs(&files, &varmap, &samples, &history))?;
        tracing::info!(
            "{} epochs already done: rewrote the training outputs from {}",
            epochs_resumed,
            checkpoint.display()
        );
    }
    if history.len() as u32 > args.epochs {
        tracing::warn!("the checkpoint already holds {} epochs, more than --epochs {}", history.len(), args.epochs);
    }
    Ok(history)
}

/// The mutable state of training: the weights, the optimiser and the weight average.
pub(crate) struct TrainState<'a> {
    pub(crate) varmap: &'a VarMap,
    pub(crate) adam: &'a mut Adam,
    pub(crate) ema: Option<&'a mut Ema>,
}

/// The model's variables sorted by name (the optimiser's and the average's order).
fn sorted_vars(varmap: &VarMap) -> Result<Vec<(String, candle_core::Var)>> {
    let mut vars = named_vars(varmap)?;
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Runs `f` with the weights that are evaluated and written: the average's where there
/// is one (the raw weights are put back afterwards, whatever `f` returns), else the raw.
fn with_eval_weights<R>(
    varmap: &VarMap,
    ema: Option<&Ema>,
    f: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let Some(ema) = ema else { return f() };
    let vars = sorted_vars(varmap)?;
    // Deep copies: `Var::set` writes into the variable's storage, which clones share.
    let raw: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
    let averaged = ema.tensors(&Device::Cpu)?;
    for (name, var) in &vars {
        let values = averaged.get(name).context("weight average lacks a parameter")?;
        var.set(&values.reshape(var.shape())?.to_device(var.device())?)?;
    }
    let result = f();
    for ((_, var), raw) in vars.iter().zip(&raw) {
        var.set(raw)?;
    }
    result
}

/// Writes the outputs of the training stage but the checkpoint: the snapshots, the
/// history and the model.
fn write_outputs(
    files: &RunFiles,
    varmap: &VarMap,
    samples: &HashMap<String, Tensor>,
    history: &[EpochRecord],
) -> anyhow::Result<()> {
    save_tensors(&files.path(file::SAMPLES), samples, None)?;
    history::write(files, history)?;
    save_tensors(&files.path(file::MODEL), &vae_model::varmap_tensors(varmap)?, None)?;
    Ok(())
}

fn write_config(files: &RunFiles, args: &TrainArgs, fingerprint: &Fingerprint) -> anyhow::Result<()> {
    let bf16_kernels = (args.precision == vae_model::Precision::Bf16).then(vae_model::machine::bf16_isa).flatten();
    let machine = Machine {
        cpu: vae_model::machine::cpu_model(),
        gemm_kernels: vae_model::machine::gemm_isa().into(),
        bf16_kernels: bf16_kernels.map(str::to_string),
    };
    let summary = TrainConfigSummary {
        machine,
        threads_used: rayon::current_num_threads(),
        precision: args.precision.name().to_string(),
        inputs_sha256: fingerprint.inputs.iter().cloned().collect(),
    };
    let mut config = serde_json::json!({
        "tool": "vae-train",
        "version": env!("CARGO_PKG_VERSION"),
        "args": args,
        "model": fingerprint.model,
        "train_images": fingerprint.train_images,
        "test_images": fingerprint.test_images,
        "optimizer": AdamConfig { lr: args.lr, ..AdamConfig::default() },
        "learning_rate": fingerprint.lr,
        "ema_decay": fingerprint.ema,
        "kl_weight": fingerprint.kl,
    });
    if let (Some(config), serde_json::Value::Object(summary)) = (config.as_object_mut(), serde_json::to_value(summary)?)
    {
        config.extend(summary);
    }
    vae_data::write_atomic(&files.path(file::CONFIG), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(())
}

/// One pass over the shuffled training set, through `cpu_step` if given, else candle's
/// autograd; returns the per-image BCE and KL.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    vae: &Vae,
    state: TrainState,
    (lr_plan, kl_plan): (&LrPlan, &KlPlan),
    mut cpu_step: Option<&mut CpuStep>,
    train: &Split,
    args: &TrainArgs,
    epoch: u32,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng(args.seed, Stream::Shuffle, epoch));
    let mut noise = rng(args.seed, Stream::TrainNoise, epoch);
    let batches = order.chunks(args.batch_size_of(epoch) as usize);
    let bar = vae_data::cli::progress_bar(batches.len() as u64, format!("epoch {epoch}"), "batches");
    let TrainState { adam, mut ema, .. } = state;
    let (mut bce_sum, mut kl_sum, mut seen) = (0.0f64, 0.0f64, 0usize);
    for (i, batch) in batches.enumerate() {
        adam.set_lr(lr_plan.at(adam.step_count()));
        let kl_weight = kl_plan.at(adam.step_count());
        let pixels = train.gather_f32(batch);
        let (k, latent) = (args.iw_samples as usize, vae.config().latent_dim);
        // One code per image for the VAE (the same draws as before the choice existed),
        // `k` per image, image-major, for the importance-weighted objective.
        let eps = normal_values(&mut noise, batch.len() * k * latent);
        let diverged = |loss: f64| {
            format!("the loss became {loss} at epoch {epoch}, batch {i}: training diverged (try a lower --lr)")
        };
        let (bce, kl) = match cpu_step.as_deref_mut() {
            Some(step) => {
                step.set_kl_weight(kl_weight as f32);
                let loss =
                    if k > 1 { step.run_importance_weighted(&pixels, &eps, k)? } else { step.run(&pixels, &eps)? };
                ensure!((loss.bce + loss.kl).is_finite(), diverged(loss.bce + loss.kl));
                adam.step_with(|name| step.grad(name), ema.as_deref_mut())?;
                (loss.bce, loss.kl)
            }
            None => {
                let x = Tensor::from_vec(pixels, (batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE), device)?;
                let eps = Tensor::from_vec(eps, (batch.len(), k, latent), device)?;
                let first = eps.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
                let terms = vae.loss_terms(&vae.forward(&x, &first)?, &x)?;
                let objective = if k > 1 {
                    // −mean IWAE bound, from the (k, B, latent) noise.
                    let (mu, logvar) = vae.encode(&x)?;
                    let samples = eps.transpose(0, 1)?.contiguous()?;
                    let log_w = vae_model::log_importance_weights(vae, &mu, &logvar, &x, &samples)?;
                    vae_model::bounds_from_log_weights(&log_w)?.iwae.mean_all()?.neg()?
                } else {
                    ((&terms.bce + (&terms.kl * kl_weight)?)? / batch.len() as f64)?
                };
                let (bce, kl) = (terms.bce.to_scalar::<f32>()? as f64, terms.kl.to_scalar::<f32>()? as f64);
                ensure!((bce + kl).is_finite(), diverged(bce + kl));
                adam.step(&objective.backward()?, ema.as_deref_mut())?;
                (bce, kl)
            }
        };
        bce_sum += bce;
        kl_sum += kl;
        seen += batch.len();
        if i % 20 == 0 {
            bar.set_message(format!(", loss {:.2}", (bce_sum + kl_sum) / seen as f64));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((bce_sum / seen as f64, kl_sum / seen as f64))
}

/// Per-image (BCE, KL) on the test set, with one sampled z per image and with z = the
/// posterior mean.
type TestLosses = ((f64, f64), (f64, f64));

/// The test set's per-image (BCE, KL) in both conventions: one sampled z per image (the
/// negative ELBO estimate), and z = the posterior mean; through `cpu_step` where there is
/// one (the same noise per image either way), else candle's graph.
fn evaluate(
    vae: &Vae,
    cpu_step: Option<&mut CpuStep>,
    test: &Split,
    (seed, epoch): (u64, u32),
    device: &Device,
) -> anyhow::Result<TestLosses> {
    let mut noise = rng(seed, Stream::TestNoise, epoch);
    let mut sums = [0.0f64; 4];
    let indices: Vec<usize> = (0..test.len()).collect();
    let latent = vae.config().latent_dim;
    match cpu_step {
        Some(step) => {
            for batch in indices.chunks(EVAL_BATCH) {
                let pixels = test.gather_f32(batch);
                let eps = normal_values(&mut noise, batch.len() * latent);
                let (mu, logvar) = step.encode(&pixels)?;
                let kl = vae_model::posterior_kl(&mu, &logvar);
                let sampled = step.log_likelihoods(&pixels, &vae_model::sampled_codes(&mu, &logvar, &eps))?;
                let at_mean = step.log_likelihoods(&pixels, &mu)?;
                let bce = |ll: Vec<f64>| -ll.iter().sum::<f64>();
                for (sum, term) in sums.iter_mut().zip([bce(sampled), kl, bce(at_mean), kl]) {
                    *sum += term;
                }
            }
        }
        None => {
            for batch in indices.chunks(EVAL_BATCH) {
                let x = images_tensor(test, batch, device)?;
                let eps = normal_tensor(&mut noise, (batch.len(), latent), device)?;
                let (sampled, at_mean) = vae.loss_terms_both(&x, &eps)?;
                for (sum, term) in sums.iter_mut().zip([&sampled.bce, &sampled.kl, &at_mean.bce, &at_mean.kl]) {
                    *sum += term.to_scalar::<f32>()? as f64;
                }
            }
        }
    }
    ensure!(sums.iter().all(|s| s.is_finite()), "the test loss is not finite after epoch {epoch}");
    let n = test.len() as f64;
    Ok(((sums[0] / n, sums[1] / n), (sums[2] / n, sums[3] / n)))
}

/// Decodes the fixed prior draws and reconstructs the fixed test images (from their
/// posterior means) after `epochs_done` epochs.
fn snapshot(
    vae: &Vae,
    z: &Tensor,
    originals: &Tensor,
    epochs_done: u32,
    samples: &mut HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    samples.insert(format!("generated.epoch_{epochs_done}"), vae.decode(z)?.detach());
    let (mu, _) = vae.encode(originals)?;
    samples.insert(format!("reconstructed.epoch_{epochs_done}"), vae.decode(&mu)?.detach());
    Ok(())
}
