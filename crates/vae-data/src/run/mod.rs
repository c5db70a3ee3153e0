//! The run directory's contract, written once: the name of every file the stages write
//! and read ([`mod@file`], [`FIGURES`]), the records of the JSON files that more than one
//! crate reads ([`EpochRecord`] of `history.json`, [`EvalSummary`] of `eval.json`,
//! [`ClassifierSummary`] of `metrics.json`), the columns of `history.npy`, the published
//! reference figures, and the parsers of numeric flags that the stages and `xtask` share
//! (so that `cargo xtask pipeline` refuses exactly what a stage would refuse, before it
//! writes anything).

mod records;

pub use records::{
    ClassifierSummary, EncodedSplit, EpochRecord, EvalSummary, LatentFeaturesRecord, Machine, MuProbes, RbfResult,
    Scores, TrainConfigSummary, TsneSummary,
};

/// The run directory's file names, relative to it.
pub mod file {
    /// Final weights (`vae-train`), PyTorch `state_dict` names.
    pub const MODEL: &str = "model.safetensors";
    /// Weights, optimiser state and history after the last epoch (`vae-train --resume`).
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Prior draws and reconstructions decoded after every epoch (`vae-train`).
    pub const SAMPLES: &str = "samples.safetensors";
    /// Per-epoch losses and timings, one [`super::EpochRecord`] each (`vae-train`).
    pub const HISTORY_JSON: &str = "history.json";
    /// Per-epoch losses, [`super::HISTORY_COLUMNS`] (`vae-train`).
    pub const HISTORY_NPY: &str = "history.npy";
    /// The flags, the machine and the input checksums of the training run (`vae-train`).
    pub const CONFIG: &str = "config.json";
    /// Likelihood bounds and latent diagnostics, an [`super::EvalSummary`] (`vae-eval`).
    pub const EVAL: &str = "eval.json";
    /// Latent features of the training images (`latent-features`).
    pub const TRAIN_LATENTS: &str = "train_latents.npy";
    /// Labels of the training images (`latent-features`).
    pub const TRAIN_LABELS: &str = "train_labels.npy";
    /// Latent features of the test images (`latent-features`).
    pub const TEST_LATENTS: &str = "test_latents.npy";
    /// Labels of the test images (`latent-features`).
    pub const TEST_LABELS: &str = "test_labels.npy";
    /// The encoder's inputs and settings (`latent-features`).
    pub const LATENT_FEATURES: &str = "latent_features.json";
    /// The classifier's scores, a [`super::ClassifierSummary`] and more (`classifier`).
    pub const METRICS: &str = "metrics.json";
    /// `confusion[true][predicted]` on the test set (`classifier`).
    pub const CONFUSION: &str = "confusion.npy";
    /// Predicted class of every test image (`classifier`).
    pub const TEST_PREDICTIONS: &str = "test_predictions.npy";
    /// The fitted LinearSVC's weights (`classifier`).
    pub const SVM: &str = "svm.safetensors";
    /// The folder of the figures (`viz`), [`super::FIGURES`].
    pub const FIGURES_DIR: &str = "figures";
    /// The t-SNE embedding (`viz`), inside [`FIGURES_DIR`].
    pub const TSNE_NPY: &str = "tsne.npy";
    /// The t-SNE settings and neighbour agreement (`viz`), inside [`FIGURES_DIR`].
    pub const TSNE_JSON: &str = "tsne.json";
    /// The write-up (`cargo xtask pipeline`).
    pub const REPORT_MD: &str = "report.md";
    /// The same write-up as a web page (`cargo xtask pipeline`).
    pub const REPORT_HTML: &str = "report.html";
}

/// One figure `viz` draws into [`file::FIGURES_DIR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FigureFile {
    /// File name, e.g. `loss.png`.
    pub file: &'static str,
    /// Caption in the report.
    pub caption: &'static str,
}

/// The figures `viz` draws, each named once.
pub mod figure {
    use super::FigureFile;

    /// A grid of real test images, one row per class.
    pub const ORIGINALS: FigureFile = FigureFile { file: "originals.png", caption: "Test images (one row per class)" };
    /// The same prior draws decoded as training progresses.
    pub const PROGRESS: FigureFile =
        FigureFile { file: "progress.png", caption: "The same 64 prior draws decoded as training progresses" };
    /// Prior draws decoded by the final model.
    pub const GENERATED: FigureFile = FigureFile { file: "generated.png", caption: "Generated images after training" };
    /// Test images above their reconstructions.
    pub const RECONSTRUCTIONS: FigureFile =
        FigureFile { file: "reconstructions.png", caption: "Test images (top) and their reconstructions (bottom)" };
    /// Losses per epoch beside the published reference's.
    pub const LOSS: FigureFile =
        FigureFile { file: "loss.png", caption: "Loss per epoch, with the published reference's points" };
    /// t-SNE of the test latents.
    pub const TSNE: FigureFile = FigureFile { file: "tsne.png", caption: "t-SNE of the test latents" };
    /// The classifier's confusion matrix.
    pub const CONFUSION: FigureFile =
        FigureFile { file: "confusion.png", caption: "LinearSVC confusion matrix on the test latents" };
    /// Decodings along each latent dimension.
    pub const TRAVERSAL: FigureFile =
        FigureFile { file: "latent_traversal.png", caption: "Decodings along each latent dimension" };
    /// The KL divergence of each latent dimension from the prior.
    pub const KL: FigureFile = FigureFile {
        file: "kl_per_dimension.png",
        caption: "KL divergence of each latent dimension's posterior from the prior (test set)",
    };
    /// Decodings along lines between test images' latent means.
    pub const INTERPOLATION: FigureFile = FigureFile {
        file: "interpolation.png",
        caption: "Decodings along straight lines between the latent means of two test images",
    };
}

/// The figures of a two-dimensional latent space, drawn only for `--latent-dim 2`.
pub mod figure_2d {
    use super::FigureFile;

    /// The test set's posterior means coloured by class.
    pub const LATENT_SCATTER: FigureFile =
        FigureFile { file: "latent_scatter.png", caption: "Posterior means of the test images, coloured by class" };
    /// Decodings over a grid of the prior's quantiles.
    pub const LATENT_MANIFOLD: FigureFile =
        FigureFile { file: "latent_manifold.png", caption: "Decodings over a 20 × 20 grid of the prior's quantiles" };
}

/// The figures drawn only for a two-dimensional latent space, in the report's order.
pub const FIGURES_2D: [FigureFile; 2] = [figure_2d::LATENT_SCATTER, figure_2d::LATENT_MANIFOLD];

/// Every figure, in the report's order.
pub const FIGURES: [FigureFile; 10] = [
    figure::ORIGINALS,
    figure::PROGRESS,
    figure::GENERATED,
    figure::RECONSTRUCTIONS,
    figure::LOSS,
    figure::TSNE,
    figure::CONFUSION,
    figure::TRAVERSAL,
    figure::INTERPOLATION,
    figure::KL,
];

/// Prior draws decoded after every epoch, in `samples.safetensors`.
pub const SAMPLE_COUNT: usize = 64;

/// Whether the run in `run` trained under the reference's Bernoulli likelihood (its
/// `config.json` says `"likelihood": "bernoulli"` in `model`, or nothing: runs from before
/// the choice existed), so that its losses compare with the published ones. A run with
/// no readable `config.json` counts as Bernoulli.
pub fn trained_bernoulli(run: &std::path::Path) -> bool {
    #[derive(serde::Deserialize)]
    struct Model {
        likelihood: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        model: Option<Model>,
    }
    let config: Option<Config> = read_json(&run.join(file::CONFIG)).ok();
    let likelihood = config.and_then(|c| c.model?.likelihood);
    likelihood.is_none_or(|l| l == "bernoulli")
}

/// Reads a JSON file of the run directory as `T`; the error names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> crate::Result<T> {
    let bytes = std::fs::read(path).map_err(|source| crate::DataError::Io { path: path.into(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| crate::DataError::format(path, format!("not the expected JSON: {e}")))
}

/// The published reference experiment's figures, which this toolkit must match or beat.
/// They live in `data/reference.json`, not in code.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Reference {
    /// Where the figures come from.
    pub source: String,
    /// `(0-based epoch, train loss, test loss)`: the test loss with z = the posterior mean.
    pub losses: Vec<(u32, f64, f64)>,
    /// LinearSVC test scores on `[mu | logvar]`.
    pub linear_svc: Scores,
}

impl Reference {
    /// The published figures (of MNIST only).
    pub fn published() -> Self {
        serde_json::from_str(include_str!("../../../../data/reference.json")).unwrap_or_else(|e| {
            unreachable!("data/reference.json is part of the source tree and is checked by a test: {e}")
        })
    }
}

/// Columns of `history.npy` (and keys of each `history.json` record), in order.
pub const HISTORY_COLUMNS: [&str; 10] = [
    "epoch",
    "train_loss",
    "train_bce",
    "train_kl",
    "test_loss",
    "test_bce",
    "test_kl",
    "test_loss_at_mean",
    "test_bce_at_mean",
    "test_kl_at_mean",
];

fn number(s: &str) -> Result<f64, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// A positive finite number (a learning rate).
pub fn positive_finite(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x.is_finite() && x > 0.0 { Ok(x) } else { Err(format!("must be a positive finite number, got {s}")) }
}

/// A finite number ≥ 0 (a weight).
pub fn non_negative_finite(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x.is_finite() && x >= 0.0 { Ok(x) } else { Err(format!("must be a finite number ≥ 0, got {s}")) }
}

/// A number in `[0, 1]` (a fraction, a decay factor).
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(format!("must be in [0, 1], got {s}")) }
}

/// A moving average's decay: a number in `[0, 1)`, where 0 turns the average off.
pub fn average_decay(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if (0.0..1.0).contains(&x) { Ok(x) } else { Err(format!("must be in [0, 1) (0: no average), got {s}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bernoulli_runs_compare_with_the_published_losses() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        assert!(trained_bernoulli(run), "no config.json: a Bernoulli run");
        for (config, bernoulli) in [
            (r#"{"model": {"latent_dim": 10}}"#, true),
            (r#"{"model": {"likelihood": "bernoulli"}}"#, true),
            (r#"{"model": {"likelihood": "continuous-bernoulli"}}"#, false),
        ] {
            std::fs::write(run.join(file::CONFIG), config).unwrap();
            assert_eq!(trained_bernoulli(run), bernoulli, "{config}");
        }
    }

    #[test]
    fn the_published_reference_reads() {
        let r = Reference::published();
        assert_eq!(r.losses.first(), Some(&(0, 149.62, 117.71)));
        assert_eq!((r.losses.len(), r.linear_svc.accuracy), (5, 0.9316));
    }

    #[test]
    fn flag_parsers_accept_their_range_only() {
        assert_eq!(positive_finite("2e-3"), Ok(2e-3));
        assert!(["0", "-1", "NaN", "inf", "x"].iter().all(|s| positive_finite(s).is_err()));
        assert_eq!((non_negative_finite("0"), non_negative_finite("4")), (Ok(0.0), Ok(4.0)));
        assert!(["-1", "NaN", "inf"].iter().all(|s| non_negative_finite(s).is_err()));
        assert_eq!((unit_interval("0"), unit_interval("1")), (Ok(0.0), Ok(1.0)));
        assert!(["-0.1", "1.5", "NaN"].iter().all(|s| unit_interval(s).is_err()));
        assert_eq!((average_decay("0.999"), average_decay("0")), (Ok(0.999), Ok(0.0)));
        assert!(["1", "-0.1", "NaN"].iter().all(|s| average_decay(s).is_err()));
    }
}
