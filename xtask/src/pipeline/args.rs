//! The flags of `cargo xtask pipeline`, validated as the stages would validate them.

use std::path::PathBuf;

use clap::Args;
use vae_data::run::{average_decay, non_negative_finite, positive_finite, unit_interval};

/// Flags of `cargo xtask pipeline`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Run name: outputs go to runs/NAME/ [default: run-YYYY-MM-DD, or quick-YYYY-MM-DD with --quick]
    #[arg(long)]
    pub name: Option<String>,
    /// Output directory (overrides runs/NAME)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Dataset directory (IDX files, raw or .gz)
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Training epochs [default: 20, or 1 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: Option<u32>,
    /// Training batch size, 1 to 1024 (vae-train's default when absent)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: Option<u32>,
    /// Epochs at the start trained at --initial-batch-size (vae-train --help explains it)
    #[arg(long)]
    pub initial_batch_epochs: Option<u32>,
    /// Batch size of the first --initial-batch-epochs epochs, 1 to 1024
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub initial_batch_size: Option<u32>,
    /// Dimension of the latent space (vae-train's default when absent: 10); with 2, viz
    /// also draws the latent scatter and the decoded manifold
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub latent_dim: Option<u32>,
    /// The decoder's likelihood, for training and the bounds: bernoulli (the default) or
    /// continuous-bernoulli (vae-train --help explains them)
    #[arg(long, value_parser = ["bernoulli", "continuous-bernoulli"])]
    pub likelihood: Option<String>,
    /// Train on the importance-weighted bound with K samples per image (vae-train
    /// --iw-samples; 1, the default, is the VAE)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub iw_samples: Option<u32>,
    /// Seed of every random choice
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training preset (vae-train --recipe): reference (or seed), the published reference
    /// experiment's stated settings
    #[arg(
        long,
        value_parser = ["reference", "seed"],
        conflicts_with_all = ["batch_size", "initial_batch_epochs", "initial_batch_size", "lr", "lr_schedule", "warmup_epochs", "ema", "beta", "kl_warmup_epochs", "likelihood", "iw_samples"]
    )]
    pub recipe: Option<String>,
    /// Adam's peak learning rate (vae-train's default when absent; `vae-train --help` gives it)
    #[arg(long, value_parser = positive_finite)]
    pub lr: Option<f64>,
    /// Learning-rate schedule: constant, cosine or step (vae-train --help explains them)
    #[arg(long, value_parser = ["constant", "cosine", "step"])]
    pub lr_schedule: Option<String>,
    /// Cosine schedule: the final learning rate as a fraction of the peak, in [0, 1]
    #[arg(long, value_parser = unit_interval)]
    pub lr_final_fraction: Option<f64>,
    /// Epochs of linear learning-rate warm-up
    #[arg(long)]
    pub warmup_epochs: Option<u32>,
    /// Decay of an exponential moving average of the weights, in [0, 1) (0: none); the
    /// average is what is evaluated and written
    #[arg(long, value_parser = average_decay)]
    pub ema: Option<f64>,
    /// Weight β of the KL term in training (a β-VAE for β ≠ 1; the losses reported stay
    /// the unweighted ELBO)
    #[arg(long, value_parser = non_negative_finite)]
    pub beta: Option<f64>,
    /// Epochs over which the KL weight ramps from 0 to β
    #[arg(long)]
    pub kl_warmup_epochs: Option<u32>,
    /// Arithmetic of the wide products in training, evaluation and encoding: f32 (the
    /// default) or bf16 (needs a CPU with AMX or AVX-512 BF16; vae-train --help explains it)
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub precision: Option<String>,
    /// Threads for training (1 to 1024) [default: all cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Device for training, evaluation and encoding: cpu, or cuda / cuda:N, which builds
    /// the stages with `--features cuda` (needs the CUDA toolkit) [default: cpu]
    #[arg(long)]
    pub device: Option<String>,
    /// A smoke run of every stage in a few minutes: 1 epoch on 5,000 training images,
    /// 1,000 test images, t-SNE of 1,000 points
    #[arg(long)]
    pub quick: bool,
    /// Rerun every stage even when its outputs are up to date
    #[arg(long)]
    pub force: bool,
}
