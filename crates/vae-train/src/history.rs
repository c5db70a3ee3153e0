//! The per-epoch loss history: `history.npy` (deterministic numbers only) and
//! `history.json` (the same plus timings).

use std::fmt;

use vae_data::run::HISTORY_COLUMNS;

use crate::RunFiles;

/// Losses and timing of one epoch (losses are per image).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 0-based epoch index.
    pub epoch: u32,
    /// Training loss (BCE + KL), averaged over the epoch's images as they were trained.
    pub train_loss: f64,
    /// Reconstruction part of the training loss.
    pub train_bce: f64,
    /// KL part of the training loss.
    pub train_kl: f64,
    /// Test loss after the epoch, one sampled z per image: the Monte-Carlo estimate of
    /// the negative ELBO, the strict figure.
    pub test_loss: f64,
    /// Reconstruction part of the test loss.
    pub test_bce: f64,
    /// KL part of the test loss.
    pub test_kl: f64,
    /// Test loss after the epoch with z = the posterior mean decoded (the convention of
    /// PyTorch's `model.eval()` idiom, which the seed's published test losses follow).
    pub test_loss_at_mean: f64,
    /// Reconstruction part of the at-mean test loss.
    pub test_bce_at_mean: f64,
    /// KL part of the at-mean test loss (the same KL: it does not depend on z).
    pub test_kl_at_mean: f64,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
    /// Images (training and test) processed per second.
    pub images_per_sec: f64,
}

/// Per-image (BCE, KL) pairs of one epoch.
#[derive(Debug, Clone, Copy)]
pub struct EpochLosses {
    /// Training, averaged as the images were trained.
    pub train: (f64, f64),
    /// Test, one sampled z per image.
    pub test: (f64, f64),
    /// Test, z = the posterior mean.
    pub test_at_mean: (f64, f64),
}

impl EpochRecord {
    /// A record from per-image (BCE, KL) pairs.
    pub fn new(epoch: u32, losses: EpochLosses, seconds: f64, images: usize) -> Self {
        let EpochLosses { train, test, test_at_mean } = losses;
        Self {
            epoch,
            train_loss: train.0 + train.1,
            train_bce: train.0,
            train_kl: train.1,
            test_loss: test.0 + test.1,
            test_bce: test.0,
            test_kl: test.1,
            test_loss_at_mean: test_at_mean.0 + test_at_mean.1,
            test_bce_at_mean: test_at_mean.0,
            test_kl_at_mean: test_at_mean.1,
            seconds,
            images_per_sec: images as f64 / seconds.max(1e-9),
        }
    }

    /// The columns of `history.npy` ([`HISTORY_COLUMNS`]).
    pub fn columns(&self) -> [f32; HISTORY_COLUMNS.len()] {
        [
            self.epoch as f64,
            self.train_loss,
            self.train_bce,
            self.train_kl,
            self.test_loss,
            self.test_bce,
            self.test_kl,
            self.test_loss_at_mean,
            self.test_bce_at_mean,
            self.test_kl_at_mean,
        ]
        .map(|x| x as f32)
    }
}

impl fmt::Display for EpochRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Epoch {}, Train Loss: {:.2}, Test Loss: {:.2} sampled z, {:.2} z = mean (train BCE {:.2} + KL {:.2}; test BCE {:.2} + KL {:.2}, at mean BCE {:.2}) in {:.1} s, {:.0} images/s",
            self.epoch,
            self.train_loss,
            self.test_loss,
            self.test_loss_at_mean,
            self.train_bce,
            self.train_kl,
            self.test_bce,
            self.test_kl,
            self.test_bce_at_mean,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Writes `history.npy` (epochs × 10, [`HISTORY_COLUMNS`]) and `history.json`.
pub(crate) fn write(files: &RunFiles, history: &[EpochRecord]) -> anyhow::Result<()> {
    let rows: Vec<f32> = history.iter().flat_map(EpochRecord::columns).collect();
    vae_data::write_npy_f32(&files.path("history.npy"), &[history.len(), HISTORY_COLUMNS.len()], &rows)?;
    vae_data::write_atomic(&files.path("history.json"), serde_json::to_string_pretty(history)?.as_bytes())?;
    Ok(())
}
