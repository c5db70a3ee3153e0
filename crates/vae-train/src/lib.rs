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
pub mod eval;
mod history;

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
use vae_data::{IMAGE_SIDE, Split, SplitKind, load_split};
use vae_model::{Vae, VaeConfig, init_varmap, loss_terms, parameter_specs, read_tensors, save_tensors, take_tensor};

use adam::{Adam, AdamConfig, Moments, named_vars};
pub use history::EpochRecord;
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
    /// step keeps about 1.2 MB of activations and gradients per image, so at most 8192
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub batch_size: u32,
    /// Adam learning rate (betas 0.9/0.999, eps 1e-8, no weight decay, as in PyTorch)
    #[arg(long, default_value_t = 1e-3, value_parser = parse_learning_rate)]
    pub lr: f64,
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

fn parse_learning_rate(s: &str) -> Result<f64, String> {
    let lr: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if lr.is_finite() && lr > 0.0 { Ok(lr) } else { Err(format!("must be a positive finite number, got {s}")) }
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
/// experiment (all but `--epochs`, `--resume`, `--out`, and the execution choices
/// `--threads`, `--device` and `--autograd`, which change results only by float
/// rounding), the model shape and the input checksums.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Fingerprint {
    batch_size: u32,
    lr: f64,
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
        lr: args.lr,
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
    let mut cpu_step = if device.is_cpu() && !args.autograd { Some(CpuStep::new(&cfg, &varmap)?) } else { None };

    let checkpoint = files.path("checkpoint.safetensors");
    let mut history = Vec::new();
    let mut samples = HashMap::new();
    if args.resume && checkpoint.exists() {
        history = restore_checkpoint(&checkpoint, &fingerprint, &varmap, &mut adam, &device)?;
        samples = restore_samples(&files.path("samples.safetensors"), history.len(), &device)?;
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

    for epoch in history.len() as u32..args.epochs {
        let started = Instant::now();
        let (train_bce, train_kl) = train_epoch(&vae, &mut adam, cpu_step.as_mut(), &train, args, epoch, &device)?;
        let (test_bce, test_kl) = evaluate(&vae, &test, args.seed, epoch, &device)?;
        let seconds = started.elapsed().as_secs_f64();
        let record =
            EpochRecord::new(epoch, (train_bce, train_kl), (test_bce, test_kl), seconds, train.len() + test.len());
        tracing::info!("{record}");
        history.push(record);
        snapshot(&vae, &sample_z, &originals, epoch + 1, &mut samples)?;
        // The checkpoint is written last: it is the commit point of the epoch.
        save_tensors(&files.path("samples.safetensors"), &samples, None)?;
        history::write(&files, &history)?;
        save_tensors(&files.path("model.safetensors"), &vae_model::varmap_tensors(&varmap)?, None)?;
        save_checkpoint(&checkpoint, &fingerprint, &varmap, &adam, &history)?;
    }
    if history.len() as u32 > args.epochs {
        tracing::warn!("the checkpoint already holds {} epochs, more than --epochs {}", history.len(), args.epochs);
    }
    Ok(history)
}

fn write_config(files: &RunFiles, args: &TrainArgs, fingerprint: &Fingerprint) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "tool": "vae-train",
        "version": env!("CARGO_PKG_VERSION"),
        "args": args,
        "threads_used": rayon::current_num_threads(),
        "model": fingerprint.model,
        "train_images": fingerprint.train_images,
        "test_images": fingerprint.test_images,
        "optimizer": AdamConfig { lr: args.lr, ..AdamConfig::default() },
        "inputs_sha256": fingerprint.inputs.iter().cloned().collect::<HashMap<_, _>>(),
    });
    vae_data::write_atomic(&files.path("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(())
}

/// One pass over the shuffled training set, through `cpu_step` if given, else candle's
/// autograd; returns the per-image BCE and KL.
fn train_epoch(
    vae: &Vae,
    adam: &mut Adam,
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
    let (mut bce_sum, mut kl_sum, mut seen) = (0.0f64, 0.0f64, 0usize);
    for (i, batch) in batches.enumerate() {
        let pixels = train.gather_f32(batch);
        let eps = normal_values(&mut noise, batch.len() * vae.config().latent_dim);
        let diverged = |loss: f64| {
            format!("the loss became {loss} at epoch {epoch}, batch {i}: training diverged (try a lower --lr)")
        };
        let (bce, kl) = match cpu_step.as_deref_mut() {
            Some(step) => {
                let loss = step.run(&pixels, &eps)?;
                ensure!((loss.bce + loss.kl).is_finite(), diverged(loss.bce + loss.kl));
                adam.step_with(|name| step.grad(name))?;
                (loss.bce, loss.kl)
            }
            None => {
                let x = Tensor::from_vec(pixels, (batch.len(), 1, IMAGE_SIDE, IMAGE_SIDE), device)?;
                let eps = Tensor::from_vec(eps, (batch.len(), vae.config().latent_dim), device)?;
                let terms = loss_terms(&vae.forward(&x, &eps)?, &x)?;
                let objective = ((&terms.bce + &terms.kl)? / batch.len() as f64)?;
                let (bce, kl) = (terms.bce.to_scalar::<f32>()? as f64, terms.kl.to_scalar::<f32>()? as f64);
                ensure!((bce + kl).is_finite(), diverged(bce + kl));
                adam.step(&objective.backward()?)?;
                (bce, kl)
            }
        };
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

/// Per-image BCE and KL on the test set, with one sampled z per image (as the seed).
fn evaluate(vae: &Vae, test: &Split, seed: u64, epoch: u32, device: &Device) -> anyhow::Result<(f64, f64)> {
    let mut noise = rng(seed, Stream::TestNoise, epoch);
    let (mut bce, mut kl) = (0.0f64, 0.0f64);
    let indices: Vec<usize> = (0..test.len()).collect();
    for batch in indices.chunks(EVAL_BATCH) {
        let x = images_tensor(test, batch, device)?;
        let eps = normal_tensor(&mut noise, (batch.len(), vae.config().latent_dim), device)?;
        let terms = loss_terms(&vae.forward(&x, &eps)?, &x)?;
        bce += terms.bce.to_scalar::<f32>()? as f64;
        kl += terms.kl.to_scalar::<f32>()? as f64;
    }
    ensure!((bce + kl).is_finite(), "the test loss is not finite after epoch {epoch}");
    Ok((bce / test.len() as f64, kl / test.len() as f64))
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

const CHECKPOINT_FORMAT: &str = "vae-train-checkpoint-1";

fn save_checkpoint(
    path: &Path,
    fingerprint: &Fingerprint,
    varmap: &VarMap,
    adam: &Adam,
    history: &[EpochRecord],
) -> anyhow::Result<()> {
    let mut tensors = vae_model::varmap_tensors(varmap)?;
    for (i, name) in adam.names().enumerate() {
        let like = tensors.get(name).context("optimiser parameter missing from the model")?.clone();
        let Moments { m, v } = adam.moments(i);
        tensors.insert(format!("adam.m.{name}"), adam::moments_tensor(m, &like)?);
        tensors.insert(format!("adam.v.{name}"), adam::moments_tensor(v, &like)?);
    }
    let metadata = HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("adam_step".to_string(), adam.step_count().to_string()),
        ("fingerprint".to_string(), serde_json::to_string(fingerprint)?),
        ("history".to_string(), serde_json::to_string(history)?),
    ]);
    save_tensors(path, &tensors, Some(metadata))?;
    Ok(())
}

fn restore_checkpoint(
    path: &Path,
    fingerprint: &Fingerprint,
    varmap: &VarMap,
    adam: &mut Adam,
    device: &Device,
) -> anyhow::Result<Vec<EpochRecord>> {
    let (mut tensors, meta) = read_tensors(path, device).context("reading the checkpoint")?;
    let field =
        |key: &str| meta.get(key).with_context(|| format!("{}: not a vae-train checkpoint (no {key})", path.display()));
    ensure!(field("format")? == CHECKPOINT_FORMAT, "{}: unknown checkpoint format", path.display());
    let saved: Fingerprint = serde_json::from_str(field("fingerprint")?).context("checkpoint fingerprint")?;
    if &saved != fingerprint {
        bail!(
            "{} was made by a different run and cannot be resumed:\n  checkpoint: {}\n  this run:   {}\nUse the same flags and data, or another --out",
            path.display(),
            serde_json::to_string(&saved)?,
            serde_json::to_string(fingerprint)?
        );
    }
    let history: Vec<EpochRecord> = serde_json::from_str(field("history")?).context("checkpoint history")?;
    let step: u64 = field("adam_step")?.parse().context("checkpoint adam_step")?;
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
    drop(vars);
    adam.restore(step, moments)?;
    Ok(history)
}

/// Snapshots of epochs `0..=epochs_done` from an earlier part of the run.
fn restore_samples(path: &Path, epochs_done: usize, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let (tensors, _) = read_tensors(path, device)?;
    Ok(tensors
        .into_iter()
        .filter(|(name, _)| {
            name.rsplit_once(".epoch_").and_then(|(_, e)| e.parse::<usize>().ok()).is_some_and(|e| e <= epochs_done)
        })
        .collect())
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
