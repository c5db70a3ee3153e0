//! The flags of `vae-train`, and the plans (learning rate, KL weight) they define.

use std::path::PathBuf;

use clap::Parser;
use vae_data::run::{average_decay, non_negative_finite, positive_finite, unit_interval};

use vae_model::{Likelihood, Precision};

use crate::schedule::{KlPlan, LrPlan, LrSchedule, Recipe};

/// The default peak learning rate: 2e-3 × √2 to 8 digits, as run in
/// docs/training-recipes.md (run 17), so that the first epoch's batch-32 rate,
/// scaled by √(32 / 256), is 1e-3.
pub const DEFAULT_LR: f64 = 2.828_427_1e-3;

/// Command-line flags of `vae-train`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    version,
    about = "Train the reference's convolutional VAE on MNIST-style IDX data",
    long_about = "Train the reference's convolutional VAE on MNIST-style IDX data.\n\nThe defaults are the project's recipe (docs/training-recipes.md): one epoch at batch 32, then batch 256, Adam at a peak of 2.83e-3 (2e-3 × √2) on a cosine decay, the KL weight ramped from 0 to 1 over the first epoch, evaluated through a 0.999 weight average. `--recipe reference` gives the published experiment's stated settings instead."
)]
pub struct TrainArgs {
    /// --data: the dataset directory
    #[command(flatten)]
    #[serde(flatten)]
    pub data: vae_data::cli::DataArgs,
    /// Run directory that receives every output (created if missing)
    #[arg(long)]
    pub out: PathBuf,
    /// Number of passes over the training set
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Images per optimisation step (the last batch of an epoch may be smaller); each image
    /// adds about 0.6 MB of activations and gradients to the CPU step's peak memory, so at
    /// most 1024 (a whole run then peaks near 1.5 GB, the model, Adam's moments and the
    /// dataset included)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    /// Epochs at the start of the run trained at --initial-batch-size instead of
    /// --batch-size (more, smaller steps while the model is far from a good one)
    #[arg(long, default_value_t = 1)]
    pub initial_batch_epochs: u32,
    /// Batch size of the first --initial-batch-epochs epochs (1 to 1024); their learning
    /// rate is the schedule's × sqrt(this / --batch-size), the square-root scaling rule
    /// for Adam (Malladi et al. 2022)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub initial_batch_size: u32,
    /// Adam learning rate, the peak of the schedule (betas 0.9/0.999, eps 1e-8, no weight
    /// decay, as in PyTorch); the default, 2e-3 × √2, makes the first epoch's batch-32
    /// rate 1e-3, the reference's
    #[arg(long, default_value_t = DEFAULT_LR, value_parser = positive_finite)]
    pub lr: f64,
    /// How the learning rate changes after the warm-up: constant (the reference's), cosine
    /// (half a cosine down to --lr × --lr-final-fraction at the last step of --epochs), or
    /// step (× --lr-step-gamma every --lr-step-epochs epochs)
    #[arg(long, value_enum, default_value_t = LrSchedule::Cosine)]
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
    /// Keep an exponential moving average of the weights with this decay (0: none, the
    /// reference's; the decay of update n is min(DECAY, (1 + n) / (10 + n))); the average
    /// is what is evaluated, snapshot and written to model.safetensors, while training
    /// goes on from the raw weights (both are in the checkpoint)
    #[arg(long, default_value_t = 0.999, value_parser = average_decay)]
    pub ema: f64,
    /// Weight β of the KL term in the training objective, (BCE + β·KL) / B: a β-VAE
    /// (Higgins et al. 2017) for β ≠ 1. The losses reported stay the unweighted ELBO, so
    /// runs with different β compare
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_finite)]
    pub beta: f64,
    /// Epochs over which the KL weight ramps linearly from 0 to --beta, step by step (KL
    /// annealing; 0: none, the reference's). The default's one epoch keeps the latent
    /// dimensions from collapsing early (docs/training-recipes.md, runs 6 and 7); it does
    /// not apply to --iw-samples above 1
    #[arg(long, default_value_t = 1)]
    pub kl_warmup_epochs: u32,
    /// The decoder's likelihood of a pixel value: bernoulli (the reference's binary
    /// cross-entropy, not a density for grey pixels) or continuous-bernoulli (its
    /// normalised version, Loaiza-Ganem and Cunningham 2019, so that losses and bounds
    /// are log-densities)
    #[arg(long, value_enum, default_value_t = Likelihood::Bernoulli)]
    pub likelihood: Likelihood,
    /// Train on the importance-weighted bound of Burda et al. (2015) with K samples per
    /// image (K = 1: the VAE's ELBO with its analytic KL). The losses reported stay the
    /// ELBO's terms (the reconstruction term averaged over the K samples, the analytic
    /// KL), so runs compare; the KL weight (--beta) does not apply. The batch size × K
    /// codes decoded per step must not exceed 2048 (memory: K ≤ 8 at the default batch)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with_all = ["beta", "kl_warmup_epochs"])]
    pub iw_samples: u32,
    /// A named preset; `reference` (or `seed`): the published reference experiment's
    /// stated settings (batch 32 throughout, constant lr 1e-3, no warm-up, no average,
    /// β = 1) instead of the defaults (docs/training-recipes.md),
    /// refusing flags that would change them
    #[arg(
        long,
        value_enum,
        conflicts_with_all = ["batch_size", "initial_batch_epochs", "initial_batch_size", "lr", "lr_schedule", "warmup_epochs", "ema", "beta", "kl_warmup_epochs", "likelihood", "iw_samples"]
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
    /// --device: where the model runs
    #[command(flatten)]
    #[serde(flatten)]
    pub device: vae_data::cli::DeviceArgs,
    /// Arithmetic of the two wide layers' products (forward and gradients) in the CPU
    /// step: f32, or bf16 (operands rounded to bfloat16, f32 accumulation and f32
    /// weights; on AMX tiles where the CPU has them, Intel Sapphire Rapids and later,
    /// otherwise AVX-512 BF16; refused on CPUs with neither). Also used for the per-epoch
    /// test losses
    #[arg(long, value_enum, default_value_t = Precision::F32, conflicts_with = "autograd")]
    pub precision: Precision,
    /// Compute gradients with candle's autograd instead of the hand-written CPU backward
    /// pass: slower, the reference the fast path is tested against (always used off the
    /// CPU); results agree to float round-off
    #[arg(long)]
    pub autograd: bool,
    /// --train-limit, --test-limit: only the first images of each split
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: vae_data::cli::LimitArgs,
    /// Continue from the run directory's checkpoint.safetensors (refused if it was made
    /// with other data or other flags, bar --epochs, --threads, --device and --autograd);
    /// starts afresh when there is no checkpoint yet
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    /// The flags with `--recipe` applied, and without the default KL warm-up where the
    /// importance-weighted objective has no KL weight to ramp.
    pub fn resolved(&self) -> Self {
        match self.recipe {
            None if self.iw_samples > 1 => Self { kl_warmup_epochs: 0, ..self.clone() },
            None => self.clone(),
            Some(Recipe::Reference) => Self {
                batch_size: 32,
                initial_batch_epochs: 0,
                lr: 1e-3,
                lr_schedule: LrSchedule::Constant,
                warmup_epochs: 0,
                ema: 0.0,
                beta: 1.0,
                kl_warmup_epochs: 0,
                ..self.clone()
            },
        }
    }

    /// The weight average's decay, `None` for no average.
    pub(crate) fn ema_decay(&self) -> Option<f64> {
        (self.ema > 0.0).then_some(self.ema)
    }

    /// The batch size of epoch `epoch` (0-based).
    pub(crate) fn batch_size_of(&self, epoch: u32) -> u32 {
        if epoch < self.initial_batch_epochs { self.initial_batch_size } else { self.batch_size }
    }

    /// The initial phase at its own batch size, as (epochs, batch size); `None` when
    /// every epoch runs at `--batch-size`.
    pub(crate) fn initial_batches(&self) -> Option<(u32, u32)> {
        let differs = self.initial_batch_epochs > 0 && self.initial_batch_size != self.batch_size;
        differs.then_some((self.initial_batch_epochs, self.initial_batch_size))
    }

    /// Optimisation steps in the first `epochs` epochs, for `train_images` images each.
    pub(crate) fn steps_before(&self, epochs: u32, train_images: usize) -> u64 {
        let steps = |batch: u32| train_images.div_ceil(batch as usize) as u64;
        let initial = epochs.min(self.initial_batch_epochs);
        u64::from(initial) * steps(self.initial_batch_size) + u64::from(epochs - initial) * steps(self.batch_size)
    }

    /// The KL weight of every step, for `train_images` images per epoch.
    pub(crate) fn kl_plan(&self, train_images: usize) -> KlPlan {
        KlPlan { beta: self.beta, warmup_steps: self.steps_before(self.kl_warmup_epochs, train_images) }
    }

    /// The learning rate of every step, for `train_images` images per epoch. The warm-up
    /// and the cosine follow the epochs: a step of an initial phase at a smaller batch
    /// moves the schedule on by that batch / `--batch-size` of a step.
    pub(crate) fn lr_plan(&self, train_images: usize) -> anyhow::Result<LrPlan> {
        let schedule = self.lr_schedule;
        let (cosine, step) = (schedule == LrSchedule::Cosine, schedule == LrSchedule::Step);
        let initial = self.initial_batches();
        anyhow::ensure!(
            !(step && initial.is_some()),
            "--lr-schedule step decays every --lr-step-epochs epochs of one batch size; it cannot be combined with --initial-batch-epochs"
        );
        let steps_per_epoch = train_images.div_ceil(self.batch_size as usize) as u64;
        Ok(LrPlan {
            base: self.lr,
            schedule,
            warmup_steps: u64::from(self.warmup_epochs) * steps_per_epoch,
            total_steps: if cosine { u64::from(self.epochs) * steps_per_epoch } else { 0 },
            final_fraction: if cosine { self.lr_final_fraction } else { 0.0 },
            step_every: if step { u64::from(self.lr_step_epochs) * steps_per_epoch } else { 0 },
            gamma: if step { self.lr_step_gamma } else { 1.0 },
            initial_steps: initial.map_or(0, |(epochs, _)| self.steps_before(epochs, train_images)),
            initial_scale: initial.map_or(1.0, |(_, size)| (f64::from(size) / f64::from(self.batch_size)).sqrt()),
            initial_step_length: initial.map_or(1.0, |(_, size)| f64::from(size) / f64::from(self.batch_size)),
        })
    }
}
