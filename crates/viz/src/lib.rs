//! `viz`: renders the reference's figures (and the ones VAE users expect) as PNG, from the
//! files the other stages wrote. No system font or graphics library is needed: plotters
//! draws on an in-memory bitmap with the DejaVu font compiled in.

pub mod figures;
pub mod render;
pub mod tsne;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use figures::{Inputs, Outcome};
use tsne::TsneParams;

/// The figures `viz` can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Figure {
    /// originals.png: a grid of real test images, one row per class
    Originals,
    /// generated.png: prior draws decoded by the final model
    Generated,
    /// progress.png: the same prior draws before training and after epochs 5, 10, 15, 20
    Progress,
    /// reconstructions.png: test images above their reconstructions
    Reconstructions,
    /// tsne.png and tsne.npy: t-SNE of the test latents, coloured by digit
    Tsne,
    /// confusion.png: the classifier's confusion matrix as a heat map
    Confusion,
    /// loss.png: losses per epoch beside the reference's
    Loss,
    /// latent_traversal.png: decodings along each latent dimension
    Traversal,
    /// interpolation.png: decodings along lines between test images' latent means
    Interpolation,
    /// kl_per_dimension.png: the KL of each latent dimension, from eval.json (vae-eval)
    Kl,
    /// latent_scatter.png: the test set's posterior means by class (2-D latents only)
    LatentScatter,
    /// latent_manifold.png: decodings over a 20 × 20 grid of prior quantiles (2-D only)
    LatentManifold,
}

/// Command-line flags of `viz`.
#[derive(Debug, Clone, Parser)]
#[command(version, about = "Render a run's figures as PNG into RUN/figures/")]
pub struct VizArgs {
    /// The run directory written by vae-train (and latent-features, classifier)
    #[arg(long)]
    pub run: PathBuf,
    /// --data: the dataset directory
    #[command(flatten)]
    pub data: vae_data::cli::DataArgs,
    /// Draw only these figures (comma-separated) [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Figure>,
    /// Test latents embedded by t-SNE (the first N)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub tsne_points: u32,
    /// t-SNE gradient-descent iterations
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(250..))]
    pub tsne_iterations: u32,
    /// Seed of t-SNE's initial embedding
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Draws the requested figures; returns each one's outcome.
pub fn run(args: &VizArgs) -> anyhow::Result<Vec<(Figure, Outcome)>> {
    anyhow::ensure!(args.run.is_dir(), "run directory {} does not exist", args.run.display());
    let checksums = vae_data::load_split(&args.data.dir, vae_data::SplitKind::Test).map(|test| test.checksums);
    let checksums = checksums.unwrap_or_default();
    let inputs = Inputs {
        run: &args.run,
        data: &args.data.dir,
        figures: args.run.join(vae_data::run::file::FIGURES_DIR),
        class_names: vae_data::class_names(&checksums),
        reference: (vae_data::identify(&checksums).is_some_and(|d| d.name == vae_data::MNIST.name)
            && vae_data::run::trained_bernoulli(&args.run))
        .then(vae_data::run::Reference::published),
    };
    std::fs::create_dir_all(&inputs.figures).with_context(|| format!("creating {}", inputs.figures.display()))?;
    let wanted = if args.only.is_empty() { Figure::value_variants().to_vec() } else { args.only.clone() };
    let params = TsneParams { perplexity: 30.0, epochs: args.tsne_iterations as usize, theta: 0.5, seed: args.seed };
    let mut outcomes = Vec::new();
    for figure in wanted {
        let outcome = match figure {
            Figure::Originals => figures::originals(&inputs),
            Figure::Generated => figures::generated(&inputs),
            Figure::Progress => figures::progress(&inputs),
            Figure::Reconstructions => figures::reconstructions(&inputs),
            Figure::Tsne => figures::tsne(&inputs, args.tsne_points as usize, params),
            Figure::Confusion => figures::confusion(&inputs),
            Figure::Loss => figures::loss(&inputs),
            Figure::Traversal => figures::traversal(&inputs),
            Figure::Interpolation => figures::interpolation(&inputs),
            Figure::Kl => figures::kl_per_dimension(&inputs),
            Figure::LatentScatter => figures::latent_scatter(&inputs),
            Figure::LatentManifold => figures::latent_manifold(&inputs),
        }
        .with_context(|| format!("drawing {figure:?}"))?;
        match &outcome {
            Outcome::Written(files, note) => tracing::info!("{figure:?}: wrote {} ({note})", files[0].display()),
            Outcome::Skipped(why) => tracing::warn!("{figure:?}: skipped, {why}"),
        }
        outcomes.push((figure, outcome));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_cells_carry_the_matrix_and_missing_inputs_are_skipped() {
        let matrix: Vec<i64> = (0..100).map(|i| i * 7 % 13).collect();
        let cells = figures::confusion_cells(&matrix, 10);
        assert_eq!(cells.len(), 100);
        for (r, c, text) in &cells {
            assert_eq!(text.parse::<i64>().unwrap(), matrix[r * 10 + c]);
        }
        // A run directory with only a confusion matrix: that figure is drawn, the rest skipped.
        let run_tmp = tempfile::tempdir().unwrap();
        let run = run_tmp.path().to_path_buf();
        vae_data::write_npy_i64(&run.join("confusion.npy"), &[10, 10], &matrix).unwrap();
        let args =
            VizArgs::try_parse_from(["viz", "--run", run.to_str().unwrap(), "--only", "confusion,loss,tsne"]).unwrap();
        let outcomes = run_figures(&args);
        assert!(matches!(outcomes[0], (Figure::Confusion, Outcome::Written(..))));
        assert!(matches!(&outcomes[1], (Figure::Loss, Outcome::Skipped(why)) if why.contains("history.json")));
        assert!(matches!(&outcomes[2], (Figure::Tsne, Outcome::Skipped(why)) if why.contains("test_latents.npy")));
        let png = image::open(run.join("figures/confusion.png")).unwrap();
        assert!(png.width() > 500 && png.height() > 500);
        // The KL bars come from eval.json: skipped without it, drawn with it.
        let kl = |run: &std::path::Path| {
            let args = VizArgs::try_parse_from(["viz", "--run", run.to_str().unwrap(), "--only", "kl"]).unwrap();
            run_figures(&args).remove(0).1
        };
        assert!(matches!(kl(&run), Outcome::Skipped(why) if why.contains("eval.json")));
        let eval = vae_data::run::EvalSummary {
            k: 16,
            images: 10,
            elbo: -100.0,
            iwae: -98.0,
            test_loss_at_mean: 97.0,
            kl_per_dimension: vec![4.5, 0.001, 3.25],
            active_units: 2,
        };
        std::fs::write(run.join("eval.json"), serde_json::to_string(&eval).unwrap()).unwrap();
        assert!(matches!(kl(&run), Outcome::Written(_, note) if note.contains("3 dimensions, 7.75 nats")));
    }

    /// Degenerate but well-formed inputs, damaged inputs and a mistyped run directory
    /// are errors naming the file, never a panic, a skip or a new directory.
    #[test]
    fn degenerate_or_damaged_inputs_and_missing_runs_are_errors() {
        let dir_tmp = tempfile::tempdir().unwrap();
        let dir = dir_tmp.path().to_path_buf();
        let draw = |only: &str| {
            let args = VizArgs::try_parse_from(["viz", "--run", dir.to_str().unwrap(), "--only", only]).unwrap();
            format!("{:#}", super::run(&args).unwrap_err())
        };
        let device = candle_core::Device::Cpu;
        let images = |n: usize| candle_core::Tensor::zeros((n, 1, 28, 28), candle_core::DType::F32, &device).unwrap();
        let samples = dir.join("samples.safetensors");
        let save = |tensors: Vec<(&str, candle_core::Tensor)>| {
            let map = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            vae_model::save_tensors(&samples, &map, None).unwrap();
        };
        save(vec![("originals", images(0)), ("reconstructed.epoch_1", images(1))]);
        let err = draw("reconstructions");
        assert!(err.contains("samples.safetensors") && err.contains("'originals'"), "{err}");
        let ints = candle_core::Tensor::zeros((2, 1, 28, 28), candle_core::DType::I64, &device).unwrap();
        save(vec![("generated.epoch_1", ints)]);
        let err = draw("generated");
        assert!(err.contains("samples.safetensors") && err.contains("I64"), "{err}");
        std::fs::write(&samples, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = draw("progress");
        assert!(err.contains("samples.safetensors") && err.contains("not a valid"), "{err}");

        vae_data::write_npy_f32(&dir.join("test_latents.npy"), &[200, 0], &[]).unwrap();
        vae_data::write_npy_i64(&dir.join("test_labels.npy"), &[200], &[1; 200]).unwrap();
        let err = draw("tsne");
        assert!(err.contains("test_latents.npy") && err.contains("[200, 0]"), "{err}");
        // A history of another shape is an error naming the file and the field.
        std::fs::write(dir.join("history.json"), r#"[{"epoch": 0, "train_loss": 200.0}]"#).unwrap();
        let err = draw("loss");
        assert!(err.contains("history.json") && err.contains("train_bce"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = dir.join("typo");
        let args = VizArgs::try_parse_from(["viz", "--run", missing.to_str().unwrap()]).unwrap();
        let err = format!("{:#}", super::run(&args).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");
        assert!(!missing.exists() && !dir.exists(), "nothing created");
    }

    /// The two figures of a 2-D latent space are drawn for a 2-D model and skipped,
    /// saying why, for a 10-D one.
    #[test]
    fn two_dimensional_latents_get_their_scatter_and_manifold() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let only = |run: &std::path::Path| {
            let args = VizArgs::try_parse_from([
                "viz",
                "--run",
                run.to_str().unwrap(),
                "--only",
                "latent-scatter,latent-manifold",
            ]);
            run_figures(&args.unwrap()).into_iter().map(|(_, outcome)| outcome).collect::<Vec<_>>()
        };
        let save_model = |latent_dim: usize| {
            let cfg = vae_model::VaeConfig { latent_dim, ..Default::default() };
            let varmap = candle_nn::VarMap::new();
            vae_model::init_varmap(&varmap, &cfg, 1, &candle_core::Device::Cpu).unwrap();
            let tensors = vae_model::varmap_tensors(&varmap).unwrap();
            vae_model::save_tensors(&run.join("model.safetensors"), &tensors, None).unwrap();
        };
        let means: Vec<f32> = (0..200).flat_map(|i| [(i % 10) as f32, (i / 10) as f32, -1.0, -1.0]).collect();
        vae_data::write_npy_f32(&run.join("test_latents.npy"), &[200, 4], &means).unwrap();
        vae_data::write_npy_i64(&run.join("test_labels.npy"), &[200], &(0..200).map(|i| i % 10).collect::<Vec<_>>())
            .unwrap();
        save_model(10);
        assert!(only(run).iter().all(|o| matches!(o, Outcome::Skipped(why) if why.contains("10-D"))));
        save_model(2);
        let outcomes = only(run);
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Written(..))), "{outcomes:?}");
        let manifold = image::open(run.join("figures/latent_manifold.png")).unwrap();
        assert_eq!(manifold.width(), 20 * 29 + 1, "20 tiles of 28 pixels and a gap each");
    }

    fn run_figures(args: &VizArgs) -> Vec<(Figure, Outcome)> {
        run(args).unwrap()
    }
}
