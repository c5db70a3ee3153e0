//! The checkpoint written after every epoch, and resuming from it: the weights, Adam's
//! moments and step, the weight average, the history and the snapshots, with the
//! fingerprint of the run that made it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use candle_core::{Device, Tensor};
use vae_model::{VaeConfig, parameter_specs, read_tensors, save_tensors, take_tensor};

use crate::adam::{self, Moments};
use crate::schedule::{KlPlan, LrPlan};
use crate::{EpochRecord, TrainError, TrainState};

/// Everything that must match for a checkpoint to be resumed: the flags that define the
/// experiment (all but `--resume`, `--out`, `--epochs` unless a cosine schedule's length
/// depends on it, and the execution choices `--threads`, `--device` and `--autograd`,
/// which change results only by float rounding), the model shape and the input checksums.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Fingerprint {
    pub(crate) batch_size: u32,
    /// The initial phase at another batch size, as (epochs, batch size); none in
    /// checkpoints made before the choice existed.
    #[serde(default)]
    pub(crate) initial_batches: Option<(u32, u32)>,
    pub(crate) lr: LrPlan,
    pub(crate) kl: KlPlan,
    pub(crate) ema: Option<f64>,
    /// Importance samples per image of the objective (1, the VAE's, in checkpoints made
    /// before the choice existed).
    #[serde(default = "one")]
    pub(crate) iw_samples: u32,
    pub(crate) seed: u64,
    /// The arithmetic of the products (f32 in checkpoints made before the choice existed).
    #[serde(default)]
    pub(crate) precision: vae_model::Precision,
    pub(crate) train_images: usize,
    pub(crate) test_images: usize,
    pub(crate) model: VaeConfig,
    pub(crate) inputs: Vec<(String, String)>,
}

fn one() -> u32 {
    1
}

/// Format 2 also holds the snapshots (`samples.NAME`), so that every output of the stage
/// can be rebuilt from the checkpoint alone, and the test losses at the posterior mean.
const CHECKPOINT_FORMAT: &str = "vae-train-checkpoint-2";
/// Prefix of the snapshot tensors in a checkpoint.
const SAMPLES_PREFIX: &str = "samples.";

/// Prefix of the averaged weights in a checkpoint.
const EMA_PREFIX: &str = "ema.";

/// Writes the checkpoint: weights, optimiser state, weight average, history and snapshots.
pub(crate) fn save_checkpoint(
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
        let Moments { m, v } = adam.moments(i)?;
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
pub(crate) fn restore_checkpoint(
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
    let vars = varmap.data().lock().map_err(|_| TrainError::LockPoisoned { what: "the VarMap" })?;
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
