//! `vae-train`: trains the seed's VAE on an MNIST-style dataset.
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
pub mod diagnostics;
pub mod ema;
pub mod eval;
mod history;
pub mod schedule;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::StandardNormal;
use vae_data::run::{non_negative_finite, open_unit_interval, positive_finite, unit_interval};
use vae_data::{IMAGE_SIDE, Split, SplitKind, load_split};
use vae_model::{Vae, VaeConfig, init_varmap, loss_terms, parameter_specs, read_tensors, save_tensors, take_tensor};

use adam::{Adam, AdamConfig, Moments, named_vars};
use ema::Ema;
pub use history::{EpochLosses, EpochRecord};
use schedule::{KlPlan, LrPlan, LrSchedule, Recipe};
use vae_model::CpuStep;

/// Command-line flags of `vae-train`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(version, about = "Train the seed's convolutional VAE on MNIST-style IDX data")]
pub struct TrainArgs {
    /// Directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (and optionally a
    /// SHA256SUMS manifest of their decompressed bytes, which is then verified)
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Run directory that receives every output (created if missing)
    #[arg(long)]
    pub out: PathBuf,
    /// Number of passes over the training set
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Images per optimisation step (the last batch of an epoch may be smaller); the CPU
    /// step keeps about 1.2 MB of activations and gradients per image, so at most 1024
    /// (about 1.3 GB, under 2 GB with the model, Adam's moments and the dataset)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    /// Adam learning rate, the peak of the schedule (betas 0.9/0.999, eps 1e-8, no weight
    /// decay, as in PyTorch)
    #[arg(long, default_value_t = 1e-3, value_parser = positive_finite)]
    pub lr: f64,
    /// How the learning rate changes after the warm-up: constant (the seed's), cosine
    /// (half a cosine down to --lr × --lr-final-fraction at the last step of --epochs), or
    /// step (× --lr-step-gamma every --lr-step-epochs epochs)
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,
    /// Cosine schedule: the final learning rate as a fraction of --lr
    #[arg(long, default_value_t = 0.0, value_parser = unit_interval)]
    pub lr_final_fraction: f64,
    /// Step schedule: epochs between two decays
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub lr_step_epochs: u32,
    /// Step schedule: the factor of each decay
    #[arg(long, default_value_t = 0.5, value_parser = unit_interval)]
    pub lr_step_gamma: f64,
    /// Epochs of linear warm-up of the learning rate from --lr / steps to --lr
    #[arg(long, default_value_t = 0)]
    pub warmup_epochs: u32,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999;
    /// the decay of update n is min(DECAY, (1 + n) / (10 + n))); the average is what is
    /// evaluated, snapshot and written to model.safetensors, while training goes on from
    /// the raw weights (both are in the checkpoint)
    #[arg(long, value_parser = open_unit_interval)]
    pub ema: Option<f64>,
    /// Weight β of the KL term in the training objective, (BCE + β·KL) / B: a β-VAE
    /// (Higgins et al. 2017) for β ≠ 1. The losses reported stay the unweighted ELBO, so
    /// runs with different β compare
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_finite)]
    pub beta: f64,
    /// Epochs over which the KL weight ramps linearly from 0 to --beta (KL annealing)
    #[arg(long, default_value_t = 0)]
    pub kl_warmup_epochs: u32,
    /// A named preset; `seed`: the seed's stated settings (batch 32, constant lr 1e-3, no
    /// warm-up, no average, β = 1), refusing flags that would change them
    #[arg(
        long,
        value_enum,
        conflicts_with_all = ["batch_size", "lr", "lr_schedule", "warmup_epochs", "ema", "beta", "kl_warmup_epochs"]
    )]
    pub recipe: Option<Recipe>,
    /// Dimension of the latent space
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub latent_dim: u32,
    /// Seed of every random choice: initial weights, shuffles, noise, sample draws
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads for the matrix kernels and the optimiser [default: all cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Where the model runs: cpu, or cuda / cuda:N (needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute gradients with candle's autograd instead of the hand-written CPU backward
    /// pass: slower, the reference the fast path is tested against (always used off the
    /// CPU); results agree to float round-off
    #[arg(long)]
    pub autograd: bool,
    /// Train on only the first N training images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub train_limit: Option<u32>,
    /// Evaluate on only the first N test images
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub test_limit: Option<u32>,
    /// Continue from the run directory's checkpoint.safetensors (refused if it was made
    /// with other data or other flags, bar --epochs, --threads, --device and --autograd);
    /// starts afresh when there is no checkpoint yet
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    /// The flags with `--recipe` applied.
    fn resolved(&self) -> Self {
        match self.recipe {
            None => self.clone(),
            Some(Recipe::Seed) => Self {
                batch_size: 32,
                lr: 1e-3,
                lr_schedule: LrSchedule::Constant,
                warmup_epochs: 0,
                ema: None,
                beta: 1.0,
                kl_warmup_epochs: 0,
                ..self.clone()
            },
        }
    }

    /// Optimisation steps in an epoch of `train_images` images.
    fn steps_per_epoch(&self, train_images: usize) -> u64 {
        train_images.div_ceil(self.batch_size as usize) as u64
    }

    /// The KL weight of every step, for `train_images` images per epoch.
    fn kl_plan(&self, train_images: usize) -> KlPlan {
        let warmup_steps = u64::from(self.kl_warmup_epochs) * self.steps_per_epoch(train_images);
        KlPlan { beta: self.beta, warmup_steps }
    }

    /// The learning rate of every step, for `train_images` images per epoch.
    fn lr_plan(&self, train_images: usize) -> LrPlan {
        let steps_per_epoch = self.steps_per_epoch(train_images);
        let schedule = self.lr_schedule;
        let (cosine, step) = (schedule == LrSchedule::Cosine, schedule == LrSchedule::Step);
        LrPlan {
            base: self.lr,
            schedule,
            warmup_steps: u64::from(self.warmup_epochs) * steps_per_epoch,
            total_steps: if cosine { u64::from(self.epochs) * steps_per_epoch } else { 0 },
            final_fraction: if cosine { self.lr_final_fraction } else { 0.0 },
            step_every: if step { u64::from(self.lr_step_epochs) * steps_per_epoch } else { 0 },
            gamma: if step { self.lr_step_gamma } else { 1.0 },
        }
    }
}

/// Number of prior draws decoded after every epoch.
pub const SAMPLE_COUNT: usize = 64;
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

/// Everything that must match for a checkpoint to be resumed: the flags that define the
/// experiment (all but `--resume`, `--out`, `--epochs` unless a cosine schedule's length
/// depends on it, and the execution choices `--threads`, `--device` and `--autograd`,
/// which change results only by float rounding), the model shape and the input checksums.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fingerprint {
    batch_size: u32,
    lr: LrPlan,
    kl: KlPlan,
    ema: Option<f64>,
    seed: u64,
    train_images: usize,
    test_images: usize,
    model: VaeConfig,
    inputs: Vec<(String, String)>,
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

/// Trains as `args` say; returns the history of all epochs (those resumed included).
pub fn run(args: &TrainArgs) -> anyhow::Result<Vec<EpochRecord>> {
    let args = &args.resolved();
    let device = vae_model::device(&args.device)?;
    let files = RunFiles::new(&args.out);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating run directory {}", args.out.display()))?;
    ensure!(args.out.is_dir(), "{} is not a directory", args.out.display());

    let mut train = load_split(&args.data, SplitKind::Train).context("loading the training set")?;
    let mut test = load_split(&args.data, SplitKind::Test).context("loading the test set")?;
    if let Some(n) = args.train_limit {
        train.truncate(n as usize);
    }
    if let Some(n) = args.test_limit {
        test.truncate(n as usize);
    }
    ensure!(!train.is_empty() && !test.is_empty(), "the dataset in {} holds no images", args.data.display());

    let cfg = VaeConfig { latent_dim: args.latent_dim as usize, ..VaeConfig::default() };
    let fingerprint = Fingerprint {
        batch_size: args.batch_size,
        lr: args.lr_plan(train.len()),
        kl: args.kl_plan(train.len()),
        ema: args.ema,
        seed: args.seed,
        train_images: train.len(),
        test_images: test.len(),
        model: cfg.clone(),
        inputs: [train.checksums.clone(), test.checksums.clone()].concat(),
    };

    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, args.seed, &device)?;
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut adam = Adam::new(named_vars(&varmap), AdamConfig { lr: args.lr, ..AdamConfig::default() });
    let mut ema = args.ema.map(|decay| Ema::new(decay, &sorted_vars(&varmap))).transpose()?;
    let mut cpu_step = if device.is_cpu() && !args.autograd { Some(CpuStep::new(&cfg, &varmap)?) } else { None };

    let checkpoint = files.path("checkpoint.safetensors");
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
        let (test_sampled, test_at_mean) =
            with_eval_weights(&varmap, ema.as_ref(), || evaluate(&vae, &test, args.seed, epoch, &device))?;
        let seconds = started.elapsed().as_secs_f64();
        let losses = history::EpochLosses { train: (train_bce, train_kl), test: test_sampled, test_at_mean };
        let record = EpochRecord::new(epoch, losses, seconds, train.len() + test.len());
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
struct TrainState<'a> {
    varmap: &'a VarMap,
    adam: &'a mut Adam,
    ema: Option<&'a mut Ema>,
}

/// The model's variables sorted by name (the optimiser's and the average's order).
fn sorted_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let mut vars = named_vars(varmap);
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Runs `f` with the weights that are evaluated and written: the average's where there
/// is one (the raw weights are put back afterwards, whatever `f` returns), else the raw.
fn with_eval_weights<R>(
    varmap: &VarMap,
    ema: Option<&Ema>,
    f: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let Some(ema) = ema else { return f() };
    let vars = sorted_vars(varmap);
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
    save_tensors(&files.path("samples.safetensors"), samples, None)?;
    history::write(files, history)?;
    save_tensors(&files.path("model.safetensors"), &vae_model::varmap_tensors(varmap)?, None)?;
    Ok(())
}

fn write_config(files: &RunFiles, args: &TrainArgs, fingerprint: &Fingerprint) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "tool": "vae-train",
        "version": env!("CARGO_PKG_VERSION"),
        "args": args,
        "threads_used": rayon::current_num_threads(),
        "machine": { "cpu": vae_model::machine::cpu_model(), "gemm_kernels": vae_model::machine::gemm_isa() },
        "model": fingerprint.model,
        "train_images": fingerprint.train_images,
        "test_images": fingerprint.test_images,
        "optimizer": AdamConfig { lr: args.lr, ..AdamConfig::default() },
        "learning_rate": fingerprint.lr,
        "ema_decay": fingerprint.ema,
        "kl_weight": fingerprint.kl,
        "inputs_sha256": fingerprint.inputs.iter().cloned().collect::<HashMap<_, _>>(),
    });
    vae_data::write_atomic(&files.path("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
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
    let batches = order.chunks(args.batch_size as usize);
    let bar = ProgressBar::new(batches.len() as u64).with_prefix(format!("epoch {epoch}"));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches, {msg} ({per_sec}, eta {eta})")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    let TrainState { varmap, adam, mut ema } = state;
    let params = sorted_vars(varmap);
    let (mut bce_sum, mut kl_sum, mut seen) = (0.0f64, 0.0f64, 0usize);
    for (i, batch) in batches.enumerate() {
        adam.set_lr(lr_plan.at(adam.step_count()));
        let kl_weight = kl_plan.at(adam.step_count());
        let pixels = train.gather_f32(batch);
        let eps = normal_values(&mut noise, batch.len() * vae.config().latent_dim);
        let diverged = |loss: f64| {
            format!("the loss became {loss} at epoch {epoch}, batch {i}: training diverged (try a lower --lr)")
        };
        let (bce, kl) = match cpu_step.as_deref_mut() {
            Some(step) => {
                step.set_kl_weight(kl_weight as f32);
                let loss = step.run(&pixels, &eps)?;
                ensure!((loss.bce + loss.kl).is_finite(), diverged(loss.bce + loss.kl));
                adam.step_with(|name| step.grad(name))?;
                (loss.bce, loss.kl)
            }
            None => {
                let x = Tensor::from_vec(pixels, (batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE), device)?;
                let eps = Tensor::from_vec(eps, (batch.len(), vae.config().latent_dim), device)?;
                let terms = loss_terms(&vae.forward(&x, &eps)?, &x)?;
                let objective = ((&terms.bce + (&terms.kl * kl_weight)?)? / batch.len() as f64)?;
                let (bce, kl) = (terms.bce.to_scalar::<f32>()? as f64, terms.kl.to_scalar::<f32>()? as f64);
                ensure!((bce + kl).is_finite(), diverged(bce + kl));
                adam.step(&objective.backward()?)?;
                (bce, kl)
            }
        };
        if let Some(ema) = ema.as_deref_mut() {
            ema.update(&params)?;
        }
        bce_sum += bce;
        kl_sum += kl;
        seen += batch.len();
        if i % 20 == 0 {
            bar.set_message(format!("loss {:.2}", (bce_sum + kl_sum) / seen as f64));
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
/// negative ELBO estimate), and z = the posterior mean.
fn evaluate(vae: &Vae, test: &Split, seed: u64, epoch: u32, device: &Device) -> anyhow::Result<TestLosses> {
    let mut noise = rng(seed, Stream::TestNoise, epoch);
    let mut sums = [0.0f64; 4];
    let indices: Vec<usize> = (0..test.len()).collect();
    for batch in indices.chunks(EVAL_BATCH) {
        let x = images_tensor(test, batch, device)?;
        let eps = normal_tensor(&mut noise, (batch.len(), vae.config().latent_dim), device)?;
        let (sampled, at_mean) = vae.loss_terms_both(&x, &eps)?;
        for (sum, term) in sums.iter_mut().zip([&sampled.bce, &sampled.kl, &at_mean.bce, &at_mean.kl]) {
            *sum += term.to_scalar::<f32>()? as f64;
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

/// Format 2 also holds the snapshots (`samples.NAME`), so that every output of the stage
/// can be rebuilt from the checkpoint alone, and the test losses at the posterior mean.
const CHECKPOINT_FORMAT: &str = "vae-train-checkpoint-2";
/// Prefix of the snapshot tensors in a checkpoint.
const SAMPLES_PREFIX: &str = "samples.";

/// Prefix of the averaged weights in a checkpoint.
const EMA_PREFIX: &str = "ema.";

fn save_checkpoint(
    path: &Path,
    fingerprint: &Fingerprint,
    state: TrainState,
    history: &[EpochRecord],
    samples: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let TrainState { varmap, adam, ema } = state;
    let mut tensors = vae_model::varmap_tensors(varmap)?;
    let mut metadata = HashMap::new();
    if let Some(ema) = ema {
        for (name, t) in ema.tensors(&Device::Cpu)? {
            let shape = tensors.get(&name).context("averaged parameter missing from the model")?.shape().clone();
            tensors.insert(format!("{EMA_PREFIX}{name}"), t.reshape(shape)?);
        }
        metadata.insert("ema_updates".to_string(), ema.updates().to_string());
    }
    tensors.extend(samples.iter().map(|(name, t)| (format!("{SAMPLES_PREFIX}{name}"), t.clone())));
    for (i, name) in adam.names().enumerate() {
        let like = tensors.get(name).context("optimiser parameter missing from the model")?.clone();
        let Moments { m, v } = adam.moments(i);
        tensors.insert(format!("adam.m.{name}"), adam::moments_tensor(m, &like)?);
        tensors.insert(format!("adam.v.{name}"), adam::moments_tensor(v, &like)?);
    }
    metadata.extend([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("adam_step".to_string(), adam.step_count().to_string()),
        ("fingerprint".to_string(), serde_json::to_string(fingerprint)?),
        ("history".to_string(), serde_json::to_string(history)?),
    ]);
    save_tensors(path, &tensors, Some(metadata))?;
    Ok(())
}

/// Restores the weights and the optimiser from a checkpoint; returns the history and the
/// snapshots.
fn restore_checkpoint(
    path: &Path,
    fingerprint: &Fingerprint,
    state: TrainState,
    device: &Device,
) -> anyhow::Result<(Vec<EpochRecord>, HashMap<String, Tensor>)> {
    let TrainState { varmap, adam, ema } = state;
    let (mut tensors, meta) = read_tensors(path, device)?;
    let field =
        |key: &str| meta.get(key).with_context(|| format!("{}: not a vae-train checkpoint (no {key})", path.display()));
    let format = field("format")?;
    ensure!(
        format == CHECKPOINT_FORMAT,
        "{}: checkpoint format '{format}', this vae-train reads '{CHECKPOINT_FORMAT}' (format 1 came from an earlier version)",
        path.display()
    );
    let in_file = |what: &str| format!("{}: {what}", path.display());
    let saved: Fingerprint = serde_json::from_str(field("fingerprint")?).with_context(|| in_file("fingerprint"))?;
    if &saved != fingerprint {
        bail!(
            "{} was made by a different run and cannot be resumed:\n  checkpoint: {}\n  this run:   {}\nUse the same flags and data, or another --out",
            path.display(),
            serde_json::to_string(&saved)?,
            serde_json::to_string(fingerprint)?
        );
    }
    let history: Vec<EpochRecord> = serde_json::from_str(field("history")?).with_context(|| in_file("history"))?;
    let step: u64 = field("adam_step")?.parse().with_context(|| in_file("adam_step"))?;
    let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
    for spec in parameter_specs(&fingerprint.model) {
        let t = take_tensor(path, &mut tensors, &spec.name, &spec.shape)?;
        vars.get(&spec.name).context("model parameter missing")?.set(&t)?;
    }
    let mut moments = Vec::new();
    for name in adam.names() {
        let shape = vars.get(name).context("optimiser parameter missing")?.dims().to_vec();
        let mut flat = |kind: &str| -> anyhow::Result<Vec<f32>> {
            Ok(take_tensor(path, &mut tensors, &format!("adam.{kind}.{name}"), &shape)?.flatten_all()?.to_vec1()?)
        };
        moments.push(Moments { m: flat("m")?, v: flat("v")? });
    }
    if let Some(ema) = ema {
        let updates: u64 = field("ema_updates")?.parse().with_context(|| in_file("ema_updates"))?;
        let mut averaged = Vec::new();
        for name in ema.names() {
            let shape = vars.get(name).context("averaged parameter missing")?.dims().to_vec();
            let t = take_tensor(path, &mut tensors, &format!("{EMA_PREFIX}{name}"), &shape)?;
            averaged.push(t.flatten_all()?.to_vec1()?);
        }
        ema.restore(updates, averaged).with_context(|| in_file("weight average"))?;
    }
    drop(vars);
    adam.restore(step, moments).with_context(|| in_file("Adam state"))?;
    let samples =
        tensors.into_iter().filter_map(|(name, t)| Some((name.strip_prefix(SAMPLES_PREFIX)?.to_string(), t))).collect();
    Ok((history, samples))
}

/// Keeps glibc from returning candle's large temporary buffers to the OS after every
/// operation (and faulting them in again): measured here, that alone halved the step
/// time. Call once at start-up.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
