//! `report.md`: the reference's write-up regenerated from a run's files, and the summary
//! table printed at the end of the pipeline.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;
use vae_data::run::{
    ClassifierSummary, EpochRecord, EvalSummary, FIGURES, FIGURES_2D, FigureFile, Machine, Reference, Scores,
    TrainConfigSummary, TsneSummary, file, read_json,
};
use vae_data::{KnownDataset, MNIST};

use crate::pipeline::StageResult;

/// One of the four LinearSVC scores.
type Score = fn(&Scores) -> f64;

/// A JSON file of the run that is not typed by the contract (or `Null` if unreadable).
fn read_value(path: &Path) -> Value {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

/// `x` to two decimals, or a dash when there is none.
fn fixed2(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.2}"))
}

/// `x` to four decimals, or a dash when there is none.
fn fixed4(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.4}"))
}

/// The known dataset the run trained on, from the checksums in its `config.json`.
fn dataset(config: &TrainConfigSummary) -> Option<&'static KnownDataset> {
    let checksums: Vec<(String, String)> = config.inputs_sha256.clone().into_iter().collect();
    vae_data::identify(&checksums)
}

/// Writes `run/report.md`; returns the summary table (Markdown, also fine on a terminal).
/// The reference's published figures appear beside this run's only when it trained on MNIST.
pub fn write(run: &Path, stages: &[StageResult]) -> anyhow::Result<String> {
    let epochs: Vec<EpochRecord> = read_json(&run.join(file::HISTORY_JSON)).unwrap_or_default();
    let metrics: Option<ClassifierSummary> = read_json(&run.join(file::METRICS)).ok();
    let eval: Option<EvalSummary> = read_json(&run.join(file::EVAL)).ok();
    let config = read_value(&run.join(file::CONFIG));
    let training: Option<TrainConfigSummary> = read_json(&run.join(file::CONFIG)).ok();
    let tsne: Option<TsneSummary> = read_json(&run.join(file::FIGURES_DIR).join(file::TSNE_JSON)).ok();
    let dataset = training.as_ref().and_then(dataset);
    // The published losses are Bernoulli cross-entropies of MNIST: other runs do not compare.
    let comparable = dataset.is_some_and(|d| d.name == MNIST.name) && vae_data::run::trained_bernoulli(run);
    let reference = comparable.then(Reference::published);
    let class_names: Vec<String> = match dataset {
        Some(d) => d.class_names.iter().map(|s| s.to_string()).collect(),
        None => (0..10).map(|k| k.to_string()).collect(),
    };

    let mut summary = String::new();
    let cells = |h: Option<&EpochRecord>| -> [String; 3] {
        let values: [fn(&EpochRecord) -> f64; 3] = [|h| h.train_loss, |h| h.test_loss, |h| h.test_loss_at_mean];
        values.map(|value| fixed2(h.map(value)))
    };
    match &reference {
        Some(published) => {
            summary.push_str(
                "| epoch | train loss | published train | test loss, z sampled | test loss, z = mean | published test (z = mean) |\n|---|---|---|---|---|---|\n",
            );
            for &(epoch, published_train, published_test) in &published.losses {
                let [train, test, at_mean] = cells(epochs.iter().find(|h| h.epoch == epoch));
                writeln!(
                    summary,
                    "| {epoch} | {train} | {published_train:.2} | {test} | {at_mean} | {published_test:.2} |"
                )?;
            }
        }
        None => {
            summary
                .push_str("| epoch | train loss | test loss, z sampled | test loss, z = mean |\n|---|---|---|---|\n");
            for h in &epochs {
                let [train, test, at_mean] = cells(Some(h));
                writeln!(summary, "| {} | {train} | {test} | {at_mean} |", h.epoch)?;
            }
        }
    }
    let published_cell = |text: String| if reference.is_some() { format!(" {text} |") } else { String::new() };
    writeln!(
        summary,
        "\n| LinearSVC (test) | this run |{}\n|---|---|{}",
        published_cell("published".into()),
        published_cell("---".into())
    )?;
    let scores = metrics.as_ref().map(|m| &m.metrics);
    let rows: [(&str, Score); 4] = [
        ("accuracy", |s| s.accuracy),
        ("macro precision", |s| s.macro_precision),
        ("macro recall", |s| s.macro_recall),
        ("macro F1", |s| s.macro_f1),
    ];
    for (label, value) in rows {
        let published = reference.as_ref().map(|r| format!("{:.4}", value(&r.linear_svc))).unwrap_or_default();
        writeln!(summary, "| {label} | {} |{}", fixed4(scores.map(value)), published_cell(published))?;
    }
    if let Some(rbf) = metrics.as_ref().and_then(|m| m.rbf.as_ref()) {
        writeln!(
            summary,
            "| RBF-kernel SVM (linfa-svm, first {} training rows): accuracy | {:.4} |{}",
            rbf.rows,
            rbf.accuracy,
            published_cell("–".into())
        )?;
    }
    if let Some(p) = metrics.as_ref().and_then(|m| m.mu_probes.as_ref()) {
        writeln!(
            summary,
            "| LinearSVC on mu alone: accuracy | {:.4} |{}",
            p.linear_svc_accuracy,
            published_cell("–".into())
        )?;
        writeln!(summary, "| 10-NN on mu alone: accuracy | {:.4} |{}", p.knn10_accuracy, published_cell("–".into()))?;
    }
    if let Some(eval) = &eval {
        writeln!(
            summary,
            "\n| test log-likelihood (nats/image, {} images) | bound |\n|---|---|\n| ELBO (k = 1) | {:.2} |\n| IWAE (k = {}) | {:.2} |\n| loss at the posterior mean (not a bound) | {:.2} |",
            eval.images, eval.elbo, eval.k, eval.iwae, eval.test_loss_at_mean
        )?;
        let kl: Vec<String> = eval.kl_per_dimension.iter().map(|k| format!("{k:.2}")).collect();
        writeln!(
            summary,
            "\nActive latent units (posterior mean variance > 0.01 over the test set): {} of {}; KL per dimension (nats): {}.",
            eval.active_units,
            kl.len(),
            kl.join(", ")
        )?;
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
    if let Some(TrainConfigSummary { machine, threads_used, precision, .. }) = &training {
        let Machine { cpu, gemm_kernels, bf16_kernels } = machine;
        let bf16 = match (precision.as_str(), bf16_kernels) {
            ("bf16", kernels) => format!(", bf16 products ({})", kernels.as_deref().unwrap_or("AVX-512 BF16")),
            _ => String::new(),
        };
        writeln!(md, "Trained on: {cpu}, {gemm_kernels} matrix kernels{bf16}, {threads_used} threads.\n")?;
    }
    md.push_str("## Summary\n\n");
    md.push_str(&summary);
    md.push_str("\n## Figures\n\n");
    let drawn_2d = FIGURES_2D.into_iter().filter(|f| run.join(file::FIGURES_DIR).join(f.file).is_file());
    for FigureFile { file, caption } in FIGURES.into_iter().chain(drawn_2d) {
        writeln!(md, "### {caption}\n\n![{caption}]({}/{file})\n", file::FIGURES_DIR)?;
    }
    if let Some(t) = &tsne {
        writeln!(
            md,
            "t-SNE: {} points in {:.2} s; 10-nearest-neighbour label agreement {:.4} in the embedding, {:.4} in the latent space.\n",
            t.points, t.seconds, t.knn10_label_agreement_embedding, t.knn10_label_agreement_latent,
        )?;
    }
    md.push_str(
        "## Training history\n\nTest loss with one sampled z per image (the negative ELBO estimate) and with z = the \
         posterior mean (the convention of the published reference's test losses).\n\n\
         | epoch | train loss | train BCE | train KL | test loss, z sampled | test BCE | test KL | test loss, z = mean | test BCE, z = mean | seconds | images/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for h in &epochs {
        // Every column of history.npy but the epoch and the at-mean KL (the same KL).
        let columns = h.columns();
        let cells: Vec<String> =
            columns[1..columns.len() - 1].iter().chain([&h.seconds]).map(|x| format!("{x:.2}")).collect();
        writeln!(md, "| {} | {} | {:.0} |", h.epoch, cells.join(" | "), h.images_per_sec)?;
    }
    md.push_str("\n## LinearSVC\n\n");
    if let Some(m) = &metrics {
        writeln!(
            md,
            "Confusion matrix (rows: true class, columns: predicted):\n\n|   | {} |\n|---|{}",
            class_names.join(" | "),
            "---|".repeat(class_names.len())
        )?;
        for (row, name) in m.confusion.iter().zip(&class_names) {
            let cells: Vec<String> = row.iter().map(u64::to_string).collect();
            writeln!(md, "| **{name}** | {} |", cells.join(" | "))?;
        }
        writeln!(
            md,
            "\nFit: {:.2} s, {} passes at most, converged: {}; training accuracy {:.4}.",
            m.fit_seconds, m.iterations, m.converged, m.train_accuracy
        )?;
    }
    md.push_str("\n## Configuration\n\n```json\n");
    md.push_str(&serde_json::to_string_pretty(&config)?);
    md.push_str("\n```\n");
    vae_data::write_atomic(&run.join(file::REPORT_MD), md.as_bytes())?;
    let title = format!("VAE run report: {}", run.file_name().map_or(String::new(), |n| n.to_string_lossy().into()));
    vae_data::write_atomic(&run.join(file::REPORT_HTML), crate::html::from_markdown(&md, &title).as_bytes())?;
    Ok(summary)
}

/// One line of the run's headline figures: the final test loss in both conventions and
/// the LinearSVC's test accuracy.
pub fn headline(run: &Path) -> String {
    let history: Vec<EpochRecord> = read_json(&run.join(file::HISTORY_JSON)).unwrap_or_default();
    let last = history.last();
    let metrics: Option<ClassifierSummary> = read_json(&run.join(file::METRICS)).ok();
    format!(
        "after epoch {}: test loss {} (z sampled) / {} (z = mean); LinearSVC test accuracy {}",
        last.map_or("–".into(), |h| h.epoch.to_string()),
        fixed2(last.map(|h| h.test_loss)),
        fixed2(last.map(|h| h.test_loss_at_mean)),
        fixed4(metrics.map(|m| m.metrics.accuracy))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use vae_data::run::MuProbes;

    #[test]
    fn published_figures_and_class_names_follow_the_dataset() {
        let run_tmp = tempfile::tempdir().unwrap();
        let run = run_tmp.path().to_path_buf();
        let record = EpochRecord {
            epoch: 0,
            train_loss: 263.3,
            train_bce: 250.0,
            train_kl: 13.3,
            test_loss: 250.6,
            test_bce: 240.0,
            test_kl: 10.6,
            test_loss_at_mean: 245.0,
            test_bce_at_mean: 234.4,
            test_kl_at_mean: 10.6,
            seconds: 1.0,
            images_per_sec: 100.0,
        };
        std::fs::write(run.join(file::HISTORY_JSON), serde_json::to_string(&[record]).unwrap()).unwrap();
        let confusion: Vec<Vec<u64>> = (0..10).map(|i| (0..10).map(|j| u64::from(i == j) * 100).collect()).collect();
        let scores = Scores { accuracy: 1.0, macro_precision: 1.0, macro_recall: 1.0, macro_f1: 1.0 };
        let metrics = ClassifierSummary {
            metrics: scores,
            confusion,
            train_accuracy: 1.0,
            converged: true,
            iterations: 3,
            fit_seconds: 0.5,
            rbf: None,
            mu_probes: Some(MuProbes { linear_svc_accuracy: 0.875, knn10_accuracy: 0.9125 }),
        };
        std::fs::write(run.join(file::METRICS), serde_json::to_string(&metrics).unwrap()).unwrap();
        for (dataset, with_reference, class) in [(&vae_data::FASHION_MNIST, false, "Ankle boot"), (&MNIST, true, "9")] {
            let config = TrainConfigSummary {
                machine: Machine {
                    cpu: "a test CPU".into(),
                    gemm_kernels: "AVX2+FMA".into(),
                    bf16_kernels: (!with_reference).then(|| "AMX".into()),
                },
                threads_used: 2,
                precision: if with_reference { "f32" } else { "bf16" }.into(),
                inputs_sha256: dataset.sha256.iter().map(|(name, sum)| (name.to_string(), sum.to_string())).collect(),
            };
            std::fs::write(run.join(file::CONFIG), serde_json::to_string(&config).unwrap()).unwrap();
            let summary = write(&run, &[]).unwrap();
            let report = std::fs::read_to_string(run.join("report.md")).unwrap();
            assert!(report.starts_with(&format!("# VAE on {}:", dataset.name)), "{report}");
            let bf16 = if with_reference { "" } else { ", bf16 products (AMX)" };
            assert!(
                report.contains(&format!("Trained on: a test CPU, AVX2+FMA matrix kernels{bf16}, 2 threads.")),
                "{report}"
            );
            assert!(summary.contains("| 10-NN on mu alone: accuracy | 0.9125 |"), "{summary}");
            assert_eq!(summary.contains("published train") && summary.contains("0.9316"), with_reference, "{summary}");
            assert!(summary.contains("| 0 | 263.30 |") && summary.contains("| accuracy | 1.0000 |"), "{summary}");
            assert!(report.contains(&format!("| **{class}** | ")), "{report}");
        }
    }
}
