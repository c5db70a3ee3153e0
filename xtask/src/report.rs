//! `report.md`: the seed's write-up regenerated from a run's files, and the summary
//! table printed at the end of the pipeline.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use vae_data::run::HISTORY_COLUMNS;
use vae_data::seed::{SEED_LOSSES, SEED_SVM};
use vae_data::{KnownDataset, MNIST};

use crate::pipeline::StageResult;

/// Every figure the report shows, with its caption.
pub const FIGURES: [(&str, &str); 9] = [
    ("originals.png", "Test images (one row per class)"),
    ("progress.png", "The same 64 prior draws decoded as training progresses"),
    ("generated.png", "Generated images after training"),
    ("reconstructions.png", "Test images (top) and their reconstructions (bottom)"),
    ("loss.png", "Loss per epoch, with the seed's published points"),
    ("tsne.png", "t-SNE of the test latents"),
    ("confusion.png", "LinearSVC confusion matrix on the test latents"),
    ("latent_traversal.png", "Decodings along each latent dimension"),
    ("interpolation.png", "Decodings along straight lines between the latent means of two test images"),
];

fn read_json(path: &Path) -> Value {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.2}"))
}

/// The known dataset the run trained on, from the checksums in its `config.json`.
fn dataset(config: &Value) -> Option<&'static KnownDataset> {
    let sums = config["inputs_sha256"].as_object()?;
    let checksums: Vec<(String, String)> =
        sums.iter().filter_map(|(name, sum)| Some((name.clone(), sum.as_str()?.to_string()))).collect();
    vae_data::identify(&checksums)
}

/// Writes `run/report.md`; returns the summary table (Markdown, also fine on a terminal).
/// The seed's published figures appear beside this run's only when it trained on MNIST.
pub fn write(run: &Path, stages: &[StageResult]) -> anyhow::Result<String> {
    let history = read_json(&run.join("history.json"));
    let metrics = read_json(&run.join("metrics.json"));
    let config = read_json(&run.join("config.json"));
    let tsne = read_json(&run.join("figures/tsne.json"));
    let eval = read_json(&run.join("eval.json"));
    let epochs = history.as_array().cloned().unwrap_or_default();
    let dataset = dataset(&config);
    let with_seed = dataset.is_some_and(|d| d.name == MNIST.name);
    let class_names: Vec<String> = match dataset {
        Some(d) => d.class_names.iter().map(|s| s.to_string()).collect(),
        None => (0..10).map(|k| k.to_string()).collect(),
    };

    let mut summary = String::new();
    let cells = |h: Option<&Value>| -> [String; 3] {
        ["train_loss", "test_loss", "test_loss_at_mean"].map(|key| h.map_or("–".into(), |h| num(&h[key])))
    };
    if with_seed {
        summary.push_str(
            "| epoch | train loss | seed train | test loss, z sampled | test loss, z = mean | seed test (z = mean) |\n|---|---|---|---|---|---|\n",
        );
        for (epoch, seed_train, seed_test) in SEED_LOSSES {
            let [train, test, at_mean] = cells(epochs.iter().find(|h| h["epoch"].as_u64() == Some(u64::from(epoch))));
            writeln!(summary, "| {epoch} | {train} | {seed_train:.2} | {test} | {at_mean} | {seed_test:.2} |")?;
        }
    } else {
        summary.push_str("| epoch | train loss | test loss, z sampled | test loss, z = mean |\n|---|---|---|---|\n");
        for h in &epochs {
            let [train, test, at_mean] = cells(Some(h));
            writeln!(summary, "| {} | {train} | {test} | {at_mean} |", h["epoch"])?;
        }
    }
    let seed_cell = |text: String| if with_seed { format!(" {text} |") } else { String::new() };
    writeln!(
        summary,
        "\n| LinearSVC (test) | this run |{}\n|---|---|{}",
        seed_cell("seed".into()),
        seed_cell("---".into())
    )?;
    let m = &metrics["metrics"];
    for ((label, seed), key) in SEED_SVM.iter().zip(["accuracy", "macro_precision", "macro_recall", "macro_f1"]) {
        let ours = m[key].as_f64().map_or("–".into(), |x| format!("{x:.4}"));
        writeln!(summary, "| {label} | {ours} |{}", seed_cell(format!("{seed:.4}")))?;
    }
    if let Some([rows, _, accuracy]) = metrics["rbf"].as_array().map(Vec::as_slice) {
        writeln!(
            summary,
            "| RBF-kernel SVM (linfa-svm, first {rows} training rows): accuracy | {} |{}",
            accuracy.as_f64().map_or("–".into(), |x| format!("{x:.4}")),
            seed_cell("–".into())
        )?;
    }
    if eval.is_object() {
        writeln!(
            summary,
            "\n| test log-likelihood (nats/image, {} images) | bound |\n|---|---|\n| ELBO (k = 1) | {} |\n| IWAE (k = {}) | {} |\n| loss at the posterior mean (not a bound) | {} |",
            eval["images"],
            num(&eval["elbo"]),
            eval["k"],
            num(&eval["iwae"]),
            num(&eval["test_loss_at_mean"])
        )?;
        if let Some(kl) = eval["kl_per_dimension"].as_array() {
            let kl: Vec<String> = kl.iter().map(num).collect();
            writeln!(
                summary,
                "\nActive latent units (posterior mean variance > 0.01 over the test set): {} of {}; KL per dimension (nats): {}.",
                eval["active_units"],
                kl.len(),
                kl.join(", ")
            )?;
        }
    }
    summary.push_str("\n| stage | seconds |\n|---|---|\n");
    for s in stages {
        let t = match (s.seconds, s.skipped) {
            (Some(t), false) => format!("{t:.1}"),
            (Some(t), true) => format!("{t:.1} (an earlier run; up to date now)"),
            (None, _) => "skipped (up to date)".into(),
        };
        writeln!(summary, "| {} | {t} |", s.name)?;
    }

    let mut md = format!("# VAE on {}: run report\n\n", dataset.map_or("an unrecognised dataset", |d| d.name));
    writeln!(
        md,
        "Run directory `{}`, generated by `cargo xtask pipeline` from the files the stages wrote.\n",
        run.display()
    )?;
    if let (Some(cpu), Some(kernels)) = (config["machine"]["cpu"].as_str(), config["machine"]["gemm_kernels"].as_str())
    {
        writeln!(md, "Trained on: {cpu}, {kernels} matrix kernels, {} threads.\n", config["threads_used"])?;
    }
    md.push_str("## Summary\n\n");
    md.push_str(&summary);
    md.push_str("\n## Figures\n\n");
    for (file, caption) in FIGURES {
        writeln!(md, "### {caption}\n\n![{caption}](figures/{file})\n")?;
    }
    if tsne.is_object() {
        writeln!(
            md,
            "t-SNE: {} points in {} s; 10-nearest-neighbour label agreement {} in the embedding, {} in the latent space.\n",
            tsne["points"],
            num(&tsne["seconds"]),
            tsne["knn10_label_agreement_embedding"].as_f64().map_or("–".into(), |x| format!("{x:.4}")),
            tsne["knn10_label_agreement_latent"].as_f64().map_or("–".into(), |x| format!("{x:.4}")),
        )?;
    }
    md.push_str(
        "## Training history\n\nTest loss with one sampled z per image (the negative ELBO estimate) and with z = the \
         posterior mean (the convention of the seed's published test losses).\n\n\
         | epoch | train loss | train BCE | train KL | test loss, z sampled | test BCE | test KL | test loss, z = mean | test BCE, z = mean | seconds | images/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    // Every column of history.npy but the epoch and the at-mean KL (the same KL).
    let columns = &HISTORY_COLUMNS[1..HISTORY_COLUMNS.len() - 1];
    for h in &epochs {
        let cells: Vec<String> = columns.iter().chain(&["seconds"]).map(|k| num(&h[*k])).collect();
        writeln!(
            md,
            "| {} | {} | {:.0} |",
            h["epoch"],
            cells.join(" | "),
            h["images_per_sec"].as_f64().unwrap_or(0.0)
        )?;
    }
    md.push_str("\n## LinearSVC\n\n");
    if let Some(matrix) = metrics["confusion"].as_array() {
        writeln!(
            md,
            "Confusion matrix (rows: true class, columns: predicted):\n\n|   | {} |\n|---|{}",
            class_names.join(" | "),
            "---|".repeat(class_names.len())
        )?;
        for (row, name) in matrix.iter().zip(&class_names) {
            let cells: Vec<String> = row.as_array().into_iter().flatten().map(Value::to_string).collect();
            writeln!(md, "| **{name}** | {} |", cells.join(" | "))?;
        }
        writeln!(
            md,
            "\nFit: {} s, {} passes at most, converged: {}; training accuracy {}.",
            num(&metrics["fit_seconds"]),
            metrics["iterations"],
            metrics["converged"],
            metrics["train_accuracy"].as_f64().map_or("–".into(), |x| format!("{x:.4}"))
        )?;
    }
    md.push_str("\n## Configuration\n\n```json\n");
    md.push_str(&serde_json::to_string_pretty(&config)?);
    md.push_str("\n```\n");
    vae_data::write_atomic(&run.join("report.md"), md.as_bytes())?;
    let title = format!("VAE run report: {}", run.file_name().map_or(String::new(), |n| n.to_string_lossy().into()));
    vae_data::write_atomic(&run.join("report.html"), crate::html::from_markdown(&md, &title).as_bytes())?;
    Ok(summary)
}

/// One line of the run's headline figures: the final test loss in both conventions and
/// the LinearSVC's test accuracy.
pub fn headline(run: &Path) -> String {
    let history = read_json(&run.join("history.json"));
    let last = history.as_array().and_then(|h| h.last()).cloned().unwrap_or(Value::Null);
    let accuracy = read_json(&run.join("metrics.json"))["metrics"]["accuracy"].as_f64();
    format!(
        "after epoch {}: test loss {} (z sampled) / {} (z = mean); LinearSVC test accuracy {}",
        last["epoch"],
        num(&last["test_loss"]),
        num(&last["test_loss_at_mean"]),
        accuracy.map_or("–".into(), |a| format!("{a:.4}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_figures_and_class_names_follow_the_dataset() {
        let run = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        std::fs::create_dir_all(&run).unwrap();
        let history = r#"[{"epoch":0,"train_loss":263.3,"test_loss":250.6}]"#;
        std::fs::write(run.join("history.json"), history).unwrap();
        let confusion: Vec<Vec<u32>> = (0..10).map(|i| (0..10).map(|j| u32::from(i == j) * 100).collect()).collect();
        let metrics = serde_json::json!({"metrics": {"accuracy": 1.0}, "confusion": confusion});
        std::fs::write(run.join("metrics.json"), metrics.to_string()).unwrap();
        for (dataset, with_seed, class) in [(&vae_data::FASHION_MNIST, false, "Ankle boot"), (&MNIST, true, "9")] {
            let sums: serde_json::Map<String, Value> =
                dataset.sha256.iter().map(|(name, sum)| (name.to_string(), Value::from(*sum))).collect();
            let config = serde_json::json!({ "inputs_sha256": sums });
            std::fs::write(run.join("config.json"), config.to_string()).unwrap();
            let summary = write(&run, &[]).unwrap();
            let report = std::fs::read_to_string(run.join("report.md")).unwrap();
            assert!(report.starts_with(&format!("# VAE on {}:", dataset.name)), "{report}");
            assert_eq!(summary.contains("seed train") && summary.contains("0.9316"), with_seed, "{summary}");
            assert!(report.contains(&format!("| **{class}** | ")), "{report}");
        }
        std::fs::remove_dir_all(run).unwrap();
    }
}
