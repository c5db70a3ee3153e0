//! The records of the JSON files that more than one crate reads, shared by their writer
//! and their readers.

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
    /// The values of [`super::HISTORY_COLUMNS`], in order.
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
    /// The arithmetic of the encoder's wide product: `f32` (also in records made before
    /// the choice existed) or `bf16`.
    #[serde(default = "f32_name")]
    pub precision: String,
    /// The dataset directory.
    pub data: std::path::PathBuf,
    /// The training split.
    pub train: EncodedSplit,
    /// The test split.
    pub test: EncodedSplit,
}

fn f32_name() -> String {
    "f32".into()
}

/// The machine a run trained on: what its bits and its seconds depend on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// The CPU's model name, as the OS reports it.
    pub cpu: String,
    /// The instruction set of the matrix kernels chosen at run time (e.g. `AVX2+FMA`).
    pub gemm_kernels: String,
    /// The instructions of the bf16 products, for a bf16 run: `AMX` or `AVX-512 BF16`
    /// (absent in f32 runs, and in files written before AMX was used, which ran on
    /// AVX-512 BF16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_kernels: Option<String>,
}

/// What `config.json` holds that other stages read (`vae-train` writes this and more).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfigSummary {
    /// Where it ran.
    pub machine: Machine,
    /// Worker threads of the matrix kernels.
    pub threads_used: usize,
    /// The arithmetic of the wide products: `f32` (also in files written before the
    /// choice existed) or `bf16`.
    #[serde(default = "f32_name")]
    pub precision: String,
    /// SHA-256 of each decompressed input file, by file name.
    pub inputs_sha256: std::collections::BTreeMap<String, String>,
}
