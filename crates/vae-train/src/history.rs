//! The per-epoch loss history: `history.npy` (deterministic numbers only) and
//! `history.json` (the same plus timings).

use vae_data::run::{EpochRecord, HISTORY_COLUMNS, file};

use crate::RunFiles;

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

impl EpochLosses {
    /// The record of epoch `epoch` that took `seconds` for `images` images.
    pub fn record(self, epoch: u32, seconds: f64, images: usize) -> EpochRecord {
        let Self { train, test, test_at_mean } = self;
        EpochRecord {
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
}

/// Writes `history.npy` (epochs × 10, [`HISTORY_COLUMNS`]) and `history.json`.
pub(crate) fn write(files: &RunFiles, history: &[EpochRecord]) -> anyhow::Result<()> {
    let rows: Vec<f32> = history.iter().flat_map(|r| r.columns().map(|x| x as f32)).collect();
    vae_data::write_npy_f32(&files.path(file::HISTORY_NPY), &[history.len(), HISTORY_COLUMNS.len()], &rows)?;
    vae_data::write_atomic(&files.path(file::HISTORY_JSON), serde_json::to_string_pretty(history)?.as_bytes())?;
    Ok(())
}
