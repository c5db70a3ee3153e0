//! `cargo xtask compare`: runs of one recipe (usually several seeds) tabled against the
//! published reference: each published checkpoint's losses as the mean and range over
//! the runs, in both conventions, and the later stages' figures where the runs have them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use vae_data::run::{ClassifierSummary, EpochRecord, EvalSummary, Reference, file, read_json};

/// Flags of `cargo xtask compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Run directories, each with history.json (and eval.json, metrics.json where the
    /// pipeline's later stages ran); runs still training count at the epochs they have
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Also write the Markdown tables to this file
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints (and with `--out` writes) the tables.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let histories = args
        .runs
        .iter()
        .map(|run| read_json(&run.join(file::HISTORY_JSON)).with_context(|| format!("reading {}", run.display())))
        .collect::<anyhow::Result<Vec<Vec<EpochRecord>>>>()?;
    let mut page = checkpoints(&histories, &Reference::published());
    page.push_str(&later_stages(&args.runs)?);
    print!("{page}");
    if let Some(out) = &args.out {
        vae_data::write_atomic(out, page.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// `mean ± s.d. (min–max)` of `values` to `decimals` places (the sample standard
/// deviation, over n − 1), the mean alone for one value, `n/a` for none.
fn spread(values: &[f64], decimals: usize) -> String {
    let n = values.len();
    if n == 0 {
        return "n/a".into();
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return format!("{mean:.decimals$}");
    }
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    format!("{mean:.decimals$} ± {sd:.decimals$} ({min:.decimals$}–{max:.decimals$})")
}

/// The losses of every run at each of the reference's published checkpoints.
fn checkpoints(histories: &[Vec<EpochRecord>], reference: &Reference) -> String {
    let mut table = String::from(
        "Each cell: the mean ± the sample standard deviation (min–max) over the runs.\n\n| epoch | runs | train loss | test loss, z sampled | test loss, z = mean | published train | published test | runs ≤ published test: z = mean / z sampled |\n|---|---|---|---|---|---|---|---|\n",
    );
    for &(epoch, train, test) in &reference.losses {
        let records: Vec<&EpochRecord> = histories.iter().filter_map(|h| h.get(epoch as usize)).collect();
        if records.is_empty() {
            continue;
        }
        let column = |f: fn(&EpochRecord) -> f64| records.iter().map(|r| f(r)).collect::<Vec<f64>>();
        let (sampled, at_mean) = (column(|r| r.test_loss), column(|r| r.test_loss_at_mean));
        let below = |values: &[f64]| values.iter().filter(|v| **v <= test).count();
        let _ = writeln!(
            table,
            "| {epoch} | {} | {} | {} | {} | {train:.2} | {test:.2} | {} / {} |",
            records.len(),
            spread(&column(|r| r.train_loss), 2),
            spread(&sampled, 2),
            spread(&at_mean, 2),
            below(&at_mean),
            below(&sampled)
        );
    }
    table
}

/// The evaluation's and the classifier's figures over the runs that have them.
fn later_stages(runs: &[PathBuf]) -> anyhow::Result<String> {
    let present = |run: &Path, name: &str| run.join(name).is_file();
    let evals: Vec<EvalSummary> = runs
        .iter()
        .filter(|r| present(r, file::EVAL))
        .map(|r| read_json(&r.join(file::EVAL)))
        .collect::<Result<_, _>>()?;
    let metrics: Vec<ClassifierSummary> = runs
        .iter()
        .filter(|r| present(r, file::METRICS))
        .map(|r| read_json(&r.join(file::METRICS)))
        .collect::<Result<_, _>>()?;
    Ok(later_stage_table(&evals, &metrics))
}

/// The table of [`later_stages`]: losses and bounds to 2 places, accuracies to 4; the
/// probes of `mu` alone over the runs whose classifier ran them.
fn later_stage_table(evals: &[EvalSummary], metrics: &[ClassifierSummary]) -> String {
    if evals.is_empty() && metrics.is_empty() {
        return String::new();
    }
    let mut table = String::from("\n| figure | runs | mean ± s.d. (min–max) |\n|---|---|---|\n");
    let mut row = |name: &str, values: Vec<f64>, decimals: usize| {
        let _ = writeln!(table, "| {name} | {} | {} |", values.len(), spread(&values, decimals));
    };
    let k = evals.first().map_or(0, |e| e.k);
    row("ELBO (nats)", evals.iter().map(|e| e.elbo).collect(), 2);
    row(&format!("IWAE bound, k = {k} (nats)"), evals.iter().map(|e| e.iwae).collect(), 2);
    row("active units", evals.iter().map(|e| e.active_units as f64).collect(), 2);
    row("LinearSVC accuracy on `[mu \\| logvar]`", metrics.iter().map(|m| m.metrics.accuracy).collect(), 4);
    row("LinearSVC macro F1", metrics.iter().map(|m| m.metrics.macro_f1).collect(), 4);
    let probes: Vec<_> = metrics.iter().filter_map(|m| m.mu_probes.as_ref()).collect();
    if !probes.is_empty() {
        row("LinearSVC accuracy on `mu`", probes.iter().map(|p| p.linear_svc_accuracy).collect(), 4);
        row("10-NN accuracy on `mu`", probes.iter().map(|p| p.knn10_accuracy).collect(), 4);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use vae_data::run::{MuProbes, Scores};

    fn record(epoch: u32, test_loss: f64, test_loss_at_mean: f64) -> EpochRecord {
        let mut r: EpochRecord = serde_json::from_value(serde_json::json!({
            "epoch": epoch, "train_loss": 100.0, "train_bce": 90.0, "train_kl": 10.0,
            "test_loss": 0.0, "test_bce": 0.0, "test_kl": 0.0,
            "test_loss_at_mean": 0.0, "test_bce_at_mean": 0.0, "test_kl_at_mean": 0.0,
            "seconds": 1.0, "images_per_sec": 1.0
        }))
        .unwrap();
        (r.test_loss, r.test_loss_at_mean) = (test_loss, test_loss_at_mean);
        r
    }

    #[test]
    fn checkpoints_give_mean_range_and_counts_against_the_published_figures() {
        let reference = Reference {
            source: String::new(),
            losses: vec![(0, 150.0, 118.0), (1, 110.0, 105.0)],
            ..Reference::published()
        };
        let histories = vec![vec![record(0, 120.0, 117.0), record(1, 104.0, 101.0)], vec![record(0, 122.0, 119.0)]];
        let table = checkpoints(&histories, &reference);
        assert!(table.contains("| 0 | 2 | 100.00 ± 0.00 (100.00–100.00) | 121.00 ± 1.41 (120.00–122.00) | 118.00 ± 1.41 (117.00–119.00) | 150.00 | 118.00 | 1 / 0 |"), "{table}");
        assert!(table.contains("| 1 | 1 | 100.00 | 104.00 | 101.00 | 110.00 | 105.00 | 1 / 1 |"), "{table}");
        assert_eq!(spread(&[], 2), "n/a");
    }

    fn classifier_summary(accuracy: f64, mu_probes: Option<(f64, f64)>) -> ClassifierSummary {
        ClassifierSummary {
            metrics: Scores { accuracy, macro_precision: accuracy, macro_recall: accuracy, macro_f1: accuracy - 0.001 },
            confusion: Vec::new(),
            train_accuracy: accuracy,
            converged: false,
            iterations: 1000,
            fit_seconds: 1.0,
            rbf: None,
            mu_probes: mu_probes
                .map(|(linear_svc_accuracy, knn10_accuracy)| MuProbes { linear_svc_accuracy, knn10_accuracy }),
        }
    }

    #[test]
    fn later_stages_give_accuracies_to_four_places_and_probes_where_run() {
        let eval = |iwae: f64, active_units: usize| EvalSummary {
            k: 16,
            images: 10_000,
            elbo: iwae - 2.5,
            iwae,
            test_loss_at_mean: 93.0,
            kl_per_dimension: vec![2.0; 10],
            active_units,
        };
        let metrics = [classifier_summary(0.9273, Some((0.8974, 0.9629))), classifier_summary(0.9326, None)];
        let table = later_stage_table(&[eval(-95.0, 9), eval(-94.0, 10)], &metrics);
        assert!(table.contains("| IWAE bound, k = 16 (nats) | 2 | -94.50 ± 0.71 (-95.00–-94.00) |"), "{table}");
        assert!(table.contains("| active units | 2 | 9.50 ± 0.71 (9.00–10.00) |"), "{table}");
        assert!(
            table.contains("| LinearSVC accuracy on `[mu \\| logvar]` | 2 | 0.9300 ± 0.0037 (0.9273–0.9326) |"),
            "{table}"
        );
        assert!(table.contains("| LinearSVC accuracy on `mu` | 1 | 0.8974 |"), "{table}");
        assert!(table.contains("| 10-NN accuracy on `mu` | 1 | 0.9629 |"), "{table}");
        assert_eq!(later_stage_table(&[], &[]), "");
    }
}
