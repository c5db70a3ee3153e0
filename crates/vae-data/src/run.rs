//! The run directory's contract, written once: the name of every file the stages write
//! and read ([`file`], [`FIGURES`]), the records of the JSON files that more than one
//! crate reads ([`EpochRecord`] of `history.json`, [`EvalSummary`] of `eval.json`,
//! [`ClassifierSummary`] of `metrics.json`), the columns of `history.npy`, the published
//! reference figures, and the parsers of numeric flags that the stages and `xtask` share
//! (so that `cargo xtask pipeline` refuses exactly what a stage would refuse, before it
//! writes anything).

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

/// Losses and timing of one epoch (losses are per image): a record of `history.json`.
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
    /// PyTorch's `model.eval()` idiom, which the reference's published test losses follow).
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

impl EpochRecord {
    /// The values of [`HISTORY_COLUMNS`], in order.
    pub fn columns(&self) -> [f64; 10] {
        [
            f64::from(self.epoch),
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
    }
}

/// The log line of an epoch.
impl std::fmt::Display for EpochRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// What `eval.json` holds that other stages read (`vae-eval` writes this and more).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalSummary {
    /// Importance samples per image.
    pub k: u32,
    /// Test images evaluated.
    pub images: usize,
    /// Mean ELBO (k = 1 bound on log p(x)), nats per image.
    pub elbo: f64,
    /// Mean k-sample importance-weighted bound on log p(x).
    pub iwae: f64,
    /// The loss with z = the posterior mean decoded (BCE + KL per image): not a bound,
    /// the convention the reference's published test losses follow.
    pub test_loss_at_mean: f64,
    /// Mean KL divergence of each latent dimension's posterior from the prior, nats per
    /// image (their sum is the loss's KL term).
    pub kl_per_dimension: Vec<f64>,
    /// Dimensions whose posterior mean varies by more than 0.01 (Burda et al., 2015).
    pub active_units: usize,
}

/// Accuracy and macro-averaged scores on the test set, as `sklearn.metrics` reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Mean of the per-class precisions.
    pub macro_precision: f64,
    /// Mean of the per-class recalls.
    pub macro_recall: f64,
    /// Mean of the per-class F1 scores (not the F1 of the two means).
    pub macro_f1: f64,
}

/// The optional comparison with an RBF-kernel SVM on a subset of the training rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RbfResult {
    /// Training rows it was fitted on.
    pub rows: usize,
    /// The kernel width.
    pub width: f64,
    /// Its test accuracy.
    pub accuracy: f64,
}

/// What `metrics.json` holds that other stages read (`classifier` writes this and more).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierSummary {
    /// Scores on the test set.
    pub metrics: Scores,
    /// `confusion[true][predicted]` on the test set.
    pub confusion: Vec<Vec<u64>>,
    /// Accuracy on the training set.
    pub train_accuracy: f64,
    /// Whether every class converged within the iteration limit.
    pub converged: bool,
    /// Largest number of passes used by any class.
    pub iterations: usize,
    /// Wall-clock seconds of the fit.
    pub fit_seconds: f64,
    /// The RBF comparison, when it was run.
    pub rbf: Option<RbfResult>,
    /// Probes of the posterior means alone, when asked for.
    pub mu_probes: Option<MuProbes>,
}

/// Test accuracies of probes on `mu` alone, the first half of `[mu | logvar]` features.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MuProbes {
    /// The same LinearSVC, fitted on `mu` only.
    pub linear_svc_accuracy: f64,
    /// The majority vote of the 10 nearest training means (Euclidean).
    pub knn10_accuracy: f64,
}

/// What `figures/tsne.json` holds that other stages read (`viz` writes this and its
/// parameters).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TsneSummary {
    /// Test latents embedded.
    pub points: usize,
    /// Seconds of the embedding.
    pub seconds: f64,
    /// Fraction of each point's 10 nearest neighbours in the 2-D embedding with its label.
    pub knn10_label_agreement_embedding: f64,
    /// The same in the latent space itself.
    pub knn10_label_agreement_latent: f64,
}

/// One split as `latent-features` encoded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncodedSplit {
    /// Shape of its feature file, `(images, columns)`.
    pub shape: [usize; 2],
    /// `(file name, SHA-256 of its decompressed bytes)` of the split's two IDX files.
    pub inputs_sha256: Vec<(String, String)>,
}

/// What `latent_features.json` holds: where the features came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatentFeaturesRecord {
    /// The tool and its version, e.g. `latent-features 0.1.0`.
    pub tool: String,
    /// The weights encoded with.
    pub model: std::path::PathBuf,
    /// Their SHA-256.
    pub model_sha256: String,
    /// The columns: `mu-logvar` or `mu`.
    pub features: String,
    /// The dataset directory.
    pub data: std::path::PathBuf,
    /// The training split.
    pub train: EncodedSplit,
    /// The test split.
    pub test: EncodedSplit,
}

/// The machine a run trained on: what its bits and its seconds depend on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// The CPU's model name, as the OS reports it.
    pub cpu: String,
    /// The instruction set of the matrix kernels chosen at run time (e.g. `AVX2+FMA`).
    pub gemm_kernels: String,
}

/// What `config.json` holds that other stages read (`vae-train` writes this and more).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfigSummary {
    /// Where it ran.
    pub machine: Machine,
    /// Worker threads of the matrix kernels.
    pub threads_used: usize,
    /// SHA-256 of each decompressed input file, by file name.
    pub inputs_sha256: std::collections::BTreeMap<String, String>,
}

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
        serde_json::from_str(include_str!("../../../data/reference.json")).unwrap_or_else(|e| {
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

/// A number strictly between 0 and 1 (a moving average's decay).
pub fn open_unit_interval(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x > 0.0 && x < 1.0 { Ok(x) } else { Err(format!("must be strictly between 0 and 1, got {s}")) }
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
        assert_eq!(open_unit_interval("0.999"), Ok(0.999));
        assert!(["0", "1", "NaN"].iter().all(|s| open_unit_interval(s).is_err()));
    }
}
