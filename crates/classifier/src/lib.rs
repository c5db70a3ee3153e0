//! `classifier`: the reference's LinearSVC on VAE latent features.
//!
//! [`LinearSvcParams`] implements linfa's `Fit` (and [`LinearSvc`] its `PredictInplace`)
//! with LIBLINEAR's dual coordinate descent. `linfa-svm` is not used: it builds a dense
//! n×n kernel matrix per class (28.8 GB for 60,000 samples), while the linear dual solver
//! needs O(n·d) memory and fits 60000×20 in seconds.

mod metrics;
pub mod probes;
mod rbf;
mod svm;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use linfa::prelude::*;
use ndarray::{Array1, Array2, s};
use vae_data::run::{ClassifierSummary, MuProbes, RbfResult, file};
use vae_data::{NUM_CLASSES, read_npy, write_atomic, write_npy_i64};

pub use metrics::{ClassScores, Metrics, confusion_matrix};
pub use rbf::{RbfParams, RbfSvm};
pub use svm::{Convergence, LinearSvc, LinearSvcParams};

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ClassifierError>;

/// Errors of the classifier library.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// Invalid hyper-parameters or an unusable dataset.
    #[error("{0}")]
    Params(String),
    /// An error from linfa.
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
    /// linfa-svm failed to fit the RBF-kernel SVM of one class against the rest.
    #[error("RBF SVM of class {class} against the rest: {source}")]
    Rbf {
        /// The class.
        class: usize,
        /// linfa-svm's error.
        source: linfa_svm::SvmError,
    },
}

/// Command-line flags of `classifier`.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    version,
    about = "Fit the reference's LinearSVC (one-vs-rest, squared hinge, L2) on latent features and score it"
)]
pub struct ClassifierArgs {
    /// Training features: NPY float32 (n, d), e.g. runs/NAME/train_latents.npy
    #[arg(long)]
    pub train: PathBuf,
    /// Training labels: NPY int64 (n,), values 0-9
    #[arg(long)]
    pub train_labels: PathBuf,
    /// Test features: NPY float32 (m, d), same d as the training features
    #[arg(long)]
    pub test: PathBuf,
    /// Test labels: NPY int64 (m,), values 0-9
    #[arg(long)]
    pub test_labels: PathBuf,
    /// Directory for metrics.json, confusion.npy, test_predictions.npy, svm.safetensors
    #[arg(long)]
    pub out: PathBuf,
    /// Inverse regularisation strength C
    #[arg(long, default_value_t = 1.0)]
    pub c: f64,
    /// Stopping tolerance on the maximal KKT violation of the dual
    #[arg(long, default_value_t = 1e-5)]
    pub tol: f64,
    /// Maximum passes over the data per class
    #[arg(long, default_value_t = 1000)]
    pub max_iter: usize,
    /// Seed of the coordinate order
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also fit an RBF-kernel SVM (linfa-svm, one-vs-rest) on the first N training rows
    /// and report its test accuracy beside the linear model's (0: skip). Its dense n×n
    /// kernel limits N to a few thousand
    #[arg(long, default_value_t = 0)]
    pub rbf_samples: usize,
    /// The features are [mu | logvar] (latent-features' default): also probe the mu half
    /// alone, with the same LinearSVC and with a 10-nearest-neighbour vote
    #[arg(long)]
    pub mu_probes: bool,
}

/// Reads `(n, d)` finite float32 features and their `(n,)` labels in `0..10`.
pub fn load_features(features: &Path, labels: &Path) -> anyhow::Result<(Array2<f64>, Array1<usize>)> {
    let (shape, x) = read_npy(features)?.into_f32(features, &[None, None])?;
    let (_, y) = read_npy(labels)?.into_i64(labels, &[None])?;
    ensure!(shape[0] > 0 && shape[1] > 0, "{}: no features (shape {shape:?})", features.display());
    ensure!(
        y.len() == shape[0],
        "{} has {} labels but {} has {} rows",
        labels.display(),
        y.len(),
        features.display(),
        shape[0]
    );
    if let Some((i, l)) = y.iter().enumerate().find(|(_, l)| !(0..NUM_CLASSES as i64).contains(l)) {
        anyhow::bail!("{}: label {l} at index {i} is outside 0..={}", labels.display(), NUM_CLASSES - 1);
    }
    let x = Array2::from_shape_vec((shape[0], shape[1]), x.into_iter().map(f64::from).collect())?;
    Ok((x, y.into_iter().map(|l| l as usize).collect()))
}

/// What [`run`] measured: what `metrics.json` holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The scores, confusion matrix and fit outcome other stages read.
    #[serde(flatten)]
    pub summary: ClassifierSummary,
    /// Scores of each class on the test set.
    pub per_class: Vec<ClassScores>,
    /// Solver outcome per class.
    pub convergence: Vec<Convergence>,
    /// The hyper-parameters.
    pub params: LinearSvcParams,
    /// `(path, SHA-256)` of the four input files.
    pub inputs_sha256: Vec<(PathBuf, String)>,
}

/// Fits on the training features, scores the test features and writes the outputs.
pub fn run(args: &ClassifierArgs) -> anyhow::Result<Report> {
    let (x_train, y_train) = load_features(&args.train, &args.train_labels)?;
    let (x_test, y_test) = load_features(&args.test, &args.test_labels)?;
    ensure!(
        x_train.ncols() == x_test.ncols(),
        "training features have {} columns but test features have {} ({} vs {})",
        x_train.ncols(),
        x_test.ncols(),
        args.train.display(),
        args.test.display()
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let params = LinearSvcParams::default().c(args.c).tol(args.tol).max_iter(args.max_iter).seed(args.seed);
    let started = Instant::now();
    let model = params.fit(&Dataset::new(x_train.clone(), y_train.clone()))?;
    let fit_seconds = started.elapsed().as_secs_f64();
    for (k, c) in model.convergence.iter().enumerate().filter(|(_, c)| !c.converged) {
        tracing::warn!(
            "class {k}: reached max_iter {} with KKT violation {:.3e} > tol {:.0e}; consider more --max-iter or scaled features",
            c.iterations,
            c.max_violation,
            args.tol
        );
    }
    let train_pred = model.predict(&x_train);
    let train_accuracy = train_pred.iter().zip(&y_train).filter(|(p, t)| p == t).count() as f64 / y_train.len() as f64;
    let predicted = model.predict(&x_test);
    let confusion = confusion_matrix(y_test.as_slice().unwrap_or(&y_test.to_vec()), &predicted.to_vec(), NUM_CLASSES);
    let rbf = if args.rbf_samples > 0 {
        let started = Instant::now();
        let (pred, width) = rbf::fit_predict(
            (&x_train, &y_train),
            &x_test,
            args.rbf_samples,
            RbfParams { c: args.c, ..RbfParams::default() },
        )?;
        let accuracy = pred.iter().zip(&y_test).filter(|(p, t)| p == t).count() as f64 / y_test.len() as f64;
        let rows = args.rbf_samples.min(x_train.nrows());
        tracing::info!(
            "RBF SVM on {rows} training rows: test accuracy {accuracy:.4} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        Some(RbfResult { rows, width, accuracy })
    } else {
        None
    };
    let mu_probes =
        if args.mu_probes { Some(probe_mu(&params, (&x_train, &y_train), (&x_test, &y_test))?) } else { None };
    let metrics = Metrics::from_confusion(&confusion);
    let summary = ClassifierSummary {
        metrics: metrics.scores(),
        train_accuracy,
        converged: model.convergence.iter().all(|c| c.converged),
        iterations: model.convergence.iter().map(|c| c.iterations).max().unwrap_or(0),
        confusion,
        fit_seconds,
        rbf,
        mu_probes,
    };
    let report = Report {
        summary,
        per_class: metrics.per_class,
        convergence: model.convergence.clone(),
        params,
        inputs_sha256: [&args.train, &args.train_labels, &args.test, &args.test_labels]
            .into_iter()
            .map(|p| Ok((p.clone(), vae_data::sha256_file(p)?)))
            .collect::<anyhow::Result<_>>()?,
    };
    write_outputs(&args.out, &model, &predicted, &report)?;
    Ok(report)
}

/// The LinearSVC and 10-NN probes on the first half of the columns, `mu`.
fn probe_mu(
    params: &LinearSvcParams,
    (x_train, y_train): (&Array2<f64>, &Array1<usize>),
    (x_test, y_test): (&Array2<f64>, &Array1<usize>),
) -> anyhow::Result<MuProbes> {
    let d = x_train.ncols();
    ensure!(d % 2 == 0, "--mu-probes needs [mu | logvar] features, an even number of columns, not {d}");
    let (mu_train, mu_test) = (x_train.slice(s![.., ..d / 2]), x_test.slice(s![.., ..d / 2]));
    let started = Instant::now();
    let model = params.fit(&Dataset::new(mu_train.to_owned(), y_train.clone()))?;
    let predicted = model.predict(&mu_test.to_owned());
    let linear_svc_accuracy =
        predicted.iter().zip(y_test).filter(|(p, t)| p == t).count() as f64 / y_test.len().max(1) as f64;
    let (train_labels, test_labels) = (y_train.to_vec(), y_test.to_vec());
    let knn10_accuracy = probes::knn_accuracy(mu_train, &train_labels, mu_test, &test_labels, 10);
    tracing::info!(
        "probes on mu ({} of {d} columns): LinearSVC {linear_svc_accuracy:.4}, 10-NN {knn10_accuracy:.4} ({:.1} s)",
        d / 2,
        started.elapsed().as_secs_f64()
    );
    Ok(MuProbes { linear_svc_accuracy, knn10_accuracy })
}

fn write_outputs(out: &Path, model: &LinearSvc, predicted: &Array1<usize>, report: &Report) -> anyhow::Result<()> {
    let flat: Vec<i64> = report.summary.confusion.iter().flatten().map(|&c| c as i64).collect();
    write_npy_i64(&out.join(file::CONFUSION), &[NUM_CLASSES, NUM_CLASSES], &flat)?;
    let pred: Vec<i64> = predicted.iter().map(|&p| p as i64).collect();
    write_npy_i64(&out.join(file::TEST_PREDICTIONS), &[pred.len()], &pred)?;
    let weights: Vec<u8> = model.weights.iter().flat_map(|&w| (w as f32).to_le_bytes()).collect();
    let bias: Vec<u8> = model.bias.iter().flat_map(|&b| (b as f32).to_le_bytes()).collect();
    let (classes, dims) = model.weights.dim();
    let tensors = [
        ("weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![classes, dims], &weights)?),
        ("bias", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![classes], &bias)?),
    ];
    write_atomic(&out.join(file::SVM), &safetensors::serialize(tensors, None)?)?;
    write_atomic(&out.join(file::METRICS), serde_json::to_string_pretty(report)?.as_bytes())?;
    Ok(())
}

/// The reference's printed summary: four metric lines, then the confusion matrix.
pub fn summary(report: &Report) -> String {
    let m = &report.summary.metrics;
    let mut s = format!(
        "Test Accuracy : {:.4}\nTest prec : {:.4}\nTest Recall : {:.4}\nTest Data F - Score : {:.4}\n\nConfusion matrix (rows: true class, columns: predicted)\n",
        m.accuracy, m.macro_precision, m.macro_recall, m.macro_f1
    );
    s.push_str(&format!("     {}\n", (0..NUM_CLASSES).map(|k| format!("{k:>5}")).collect::<String>()));
    for (k, row) in report.summary.confusion.iter().enumerate() {
        s.push_str(&format!("{k:>5}{}\n", row.iter().map(|c| format!("{c:>5}")).collect::<String>()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vae_data::write_npy_f32;

    #[test]
    fn mismatched_or_invalid_inputs_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let p = |n: &str| d.join(n);
        write_npy_f32(&p("x20.npy"), &[4, 20], &[0.5; 80]).unwrap();
        write_npy_f32(&p("x16.npy"), &[4, 16], &[0.5; 64]).unwrap();
        write_npy_f32(&p("nan.npy"), &[2, 2], &[0.5, f32::NAN, 0.0, 1.0]).unwrap();
        write_npy_i64(&p("y4.npy"), &[4], &[0, 1, 2, 3]).unwrap();
        write_npy_i64(&p("y3.npy"), &[3], &[0, 1, 2]).unwrap();
        write_npy_i64(&p("y_bad.npy"), &[4], &[0, 1, 12, 3]).unwrap();
        let err = |x: &str, y: &str| format!("{:#}", load_features(&p(x), &p(y)).unwrap_err());
        assert!(err("x20.npy", "y3.npy").contains("3 labels but"));
        assert!(err("x20.npy", "y_bad.npy").contains("label 12 at index 2"));
        assert!(err("nan.npy", "y4.npy").contains("not finite"));
        assert!(err("y4.npy", "y4.npy").contains("expected (_, _)"));
        assert!(err("x20.npy", "x20.npy").contains("expected <i8") || err("x20.npy", "x20.npy").contains("shape"));
        let args = ClassifierArgs {
            train: p("x20.npy"),
            train_labels: p("y4.npy"),
            test: p("x16.npy"),
            test_labels: p("y4.npy"),
            out: d.join("out"),
            c: 1.0,
            tol: 1e-5,
            max_iter: 1000,
            seed: 0,
            rbf_samples: 0,
            mu_probes: false,
        };
        let e = format!("{:#}", run(&args).unwrap_err());
        assert!(e.contains("20 columns but test features have 16"), "{e}");
        assert!(!d.join("out/metrics.json").exists());
        // One class only (scikit-learn refuses it too).
        write_npy_i64(&p("y_one.npy"), &[4], &[3; 4]).unwrap();
        let one_class = ClassifierArgs { train_labels: p("y_one.npy"), test: p("x20.npy"), ..args };
        let e = format!("{:#}", run(&one_class).unwrap_err());
        assert!(e.contains("single class (3)"), "{e}");
        assert!(!d.join("out/metrics.json").exists());
    }

    /// `[mu | logvar]` features whose mu half carries the class and whose logvar half is
    /// noise: the probes on mu alone read the class; an odd column count is refused.
    #[test]
    fn probes_on_mu_read_the_class_from_the_first_half() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut rng = StdRng::seed_from_u64(5);
        let mut split = |name: &str, n: usize, columns: usize| {
            let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
            let mut x = Vec::new();
            for &l in &labels {
                let mu = [l as f32 * 2.0, -(l as f32)];
                x.extend((0..columns).map(|c| mu.get(c).copied().unwrap_or(0.0) + rng.random_range(-0.4f32..0.4)));
            }
            let (xs, ys) = (d.join(format!("{name}_x.npy")), d.join(format!("{name}_y.npy")));
            write_npy_f32(&xs, &[n, columns], &x).unwrap();
            write_npy_i64(&ys, &[n], &labels).unwrap();
            (xs, ys)
        };
        let ((train, train_labels), (test, test_labels)) = (split("train", 300, 4), split("test", 90, 4));
        let args = ClassifierArgs::try_parse_from(
            ["classifier", "--mu-probes", "--out", d.to_str().unwrap()].iter().chain(
                [
                    ("--train", &train),
                    ("--train-labels", &train_labels),
                    ("--test", &test),
                    ("--test-labels", &test_labels),
                ]
                .iter()
                .flat_map(|(flag, path)| [*flag, path.to_str().unwrap()])
                .collect::<Vec<_>>()
                .iter(),
            ),
        )
        .unwrap();
        let probes = run(&args).unwrap().summary.mu_probes.unwrap();
        assert!(probes.linear_svc_accuracy > 0.95 && probes.knn10_accuracy > 0.95, "{probes:?}");
        let ((odd, odd_labels), _) = (split("odd", 30, 3), ());
        let odd_args = ClassifierArgs {
            train: odd.clone(),
            train_labels: odd_labels.clone(),
            test: odd,
            test_labels: odd_labels,
            ..args
        };
        assert!(format!("{:#}", run(&odd_args).unwrap_err()).contains("even number of columns"));
    }
}
