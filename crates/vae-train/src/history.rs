//! The per-epoch loss history: `history.npy` (deterministic numbers only) and
//! `history.json` (the same plus timings).

use std::fmt;

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
    /// Test loss after the epoch, one sampled z per image.
    pub test_loss: f64,
    /// Reconstruction part of the test loss.
    pub test_bce: f64,
    /// KL part of the test loss.
    pub test_kl: f64,
    /// Wall-clock seconds of training and evaluation.
    pub seconds: f64,
    /// Images (training and test) processed per second.
    pub images_per_sec: f64,
}

impl EpochRecord {
    /// A record from per-image (BCE, KL) pairs.
    pub fn new(epoch: u32, train: (f64, f64), test: (f64, f64), seconds: f64, images: usize) -> Self {
        Self {
            epoch,
            train_loss: train.0 + train.1,
            train_bce: train.0,
            train_kl: train.1,
            test_loss: test.0 + test.1,
            test_bce: test.0,
            test_kl: test.1,
            seconds,
            images_per_sec: images as f64 / seconds.max(1e-9),
        }
    }

    /// The seven columns of `history.npy`.
    pub fn columns(&self) -> [f32; 7] {
        let loss = |x: f64| x as f32;
        [
            self.epoch as f32,
            loss(self.train_loss),
            loss(self.train_bce),
            loss(self.train_kl),
            loss(self.test_loss),
            loss(self.test_bce),
            loss(self.test_kl),
        ]
    }
}

impl fmt::Display for EpochRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Epoch {}, Train Loss: {:.2}, Test Loss: {:.2} (train BCE {:.2} + KL {:.2}; test BCE {:.2} + KL {:.2}) in {:.1} s, {:.0} images/s",
            self.epoch,
            self.train_loss,
            self.test_loss,
            self.train_bce,
            self.train_kl,
            self.test_bce,
            self.test_kl,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Writes `history.npy` (epochs × 7: epoch, train loss/BCE/KL, test loss/BCE/KL) and
/// `history.json`.
pub(crate) fn write(files: &RunFiles, history: &[EpochRecord]) -> anyhow::Result<()> {
    let rows: Vec<f32> = history.iter().flat_map(EpochRecord::columns).collect();
    vae_data::write_npy_f32(&files.path("history.npy"), &[history.len(), 7], &rows)?;
    vae_data::write_atomic(&files.path("history.json"), serde_json::to_string_pretty(history)?.as_bytes())?;
    Ok(())
}
