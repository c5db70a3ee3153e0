//! `cargo xtask compare`: runs of one recipe (usually several seeds) tabled against the
//! published reference: each published checkpoint's losses as the mean and range over
//! the runs, in both conventions, the later stages' figures where the runs have them,
//! and each run's final figures on a line of its own (so that runs of several recipes
//! show what each traded for what).

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

/// What `compare` reads of one run directory.
struct RunFigures {
    /// The directory's name.
    name: String,
    history: Vec<EpochRecord>,
    eval: Option<EvalSummary>,
    metrics: Option<ClassifierSummary>,
}

impl RunFigures {
    /// Reads `run`'s history, and its eval.json and metrics.json where they exist.
    fn read(run: &Path) -> anyhow::Result<Self> {
        fn optional<T: serde::de::DeserializeOwned>(run: &Path, name: &str) -> anyhow::Result<Option<T>> {
            let path = run.join(name);
            Ok(path.is_file().then(|| read_json(&path)).transpose()?)
        }
        Ok(Self {
            name: run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned()),
            history: read_json(&run.join(file::HISTORY_JSON))?,
            eval: optional(run, file::EVAL)?,
            metrics: optional(run, file::METRICS)?,
        })
    }
}

/// Prints (and with `--out` writes) the tables.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|run| RunFigures::read(run).with_context(|| format!("reading {}", run.display())))
        .collect::<anyhow::Result<Vec<RunFigures>>>()?;
    let reference = Reference::published();
    let histories: Vec<&[EpochRecord]> = runs.iter().map(|r| r.history.as_slice()).collect();
    let mut page = checkpoints(&histories, &reference);
    let evals: Vec<EvalSummary> = runs.iter().filter_map(|r| r.eval.clone()).collect();
    let metrics: Vec<ClassifierSummary> = runs.iter().filter_map(|r| r.metrics.clone()).collect();
    page.push_str(&later_stage_table(&evals, &metrics));
    page.push_str(&per_run_table(&runs, &reference));
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
fn checkpoints(histories: &[&[EpochRecord]], reference: &Reference) -> String {
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

/// The evaluation's and the classifier's figures over the runs that have them: losses
/// and bounds to 2 places, accuracies to 4; the probes of `mu` alone over the runs whose
/// classifier ran them.
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

/// One line per run: its last epoch's test losses, IWAE bound, active units and
/// LinearSVC accuracy (`–` where a stage did not run), then the published figures.
fn per_run_table(runs: &[RunFigures], reference: &Reference) -> String {
    let mut table = String::from(
        "\n| run | epochs | last test loss, z sampled / z = mean | IWAE bound | active units | LinearSVC `[mu \\| logvar]` |\n|---|---|---|---|---|---|\n",
    );
    let missing = || "–".to_string();
    for run in runs {
        let last =
            run.history.last().map_or_else(missing, |r| format!("{:.2} / {:.2}", r.test_loss, r.test_loss_at_mean));
        let _ = writeln!(
            table,
            "| {} | {} | {last} | {} | {} | {} |",
            run.name,
            run.history.len(),
            run.eval.as_ref().map_or_else(missing, |e| format!("{:.2}", e.iwae)),
            run.eval.as_ref().map_or_else(missing, |e| e.active_units.to_string()),
            run.metrics.as_ref().map_or_else(missing, |m| format!("{:.4}", m.metrics.accuracy)),
        );
    }
    if let Some(&(epoch, _, test)) = reference.losses.last() {
        let _ = writeln!(
            table,
            "| published | {} | – / {test:.2} | – | – | {:.4} |",
            epoch + 1,
            reference.linear_svc.accuracy
        );
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
        let (first, second) = ([record(0, 120.0, 117.0), record(1, 104.0, 101.0)], [record(0, 122.0, 119.0)]);
        let table = checkpoints(&[&first, &second], &reference);
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
    fn per_run_table_gives_each_run_s_last_epoch_and_dashes_for_stages_not_run() {
        let eval = EvalSummary {
            k: 16,
            images: 10_000,
            elbo: -97.5,
            iwae: -94.8,
            test_loss_at_mean: 93.4,
            kl_per_dimension: vec![2.0; 10],
            active_units: 9,
        };
        let runs = [
            RunFigures {
                name: "finished".into(),
                history: vec![record(0, 108.0, 104.0), record(1, 97.53, 93.4)],
                eval: Some(eval),
                metrics: Some(classifier_summary(0.9304, None)),
            },
            RunFigures { name: "training".into(), history: vec![record(0, 118.5, 115.0)], eval: None, metrics: None },
        ];
        let table = per_run_table(&runs, &Reference::published());
        assert!(table.contains("| finished | 2 | 97.53 / 93.40 | -94.80 | 9 | 0.9304 |"), "{table}");
        assert!(table.contains("| training | 1 | 118.50 / 115.00 | – | – | – |"), "{table}");
        assert!(table.contains("| published | 20 | – / 101.55 | – | – | 0.9316 |"), "{table}");
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
