//! `cargo xtask study`: the objectives a VAE study compares, each trained and analysed by
//! the whole pipeline into its own run directory under the same budget and seed, then
//! tabled from the runs' files into one Markdown page (`docs/study.md`).

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, bail};
use clap::Parser;
use vae_data::run::{ClassifierSummary, EpochRecord, EvalSummary, FigureFile, TsneSummary, figure, file, read_json};

use crate::pipeline::PipelineArgs;
use crate::project_root;

/// Flags of `cargo xtask study`.
#[derive(Debug, Clone, clap::Args)]
pub struct StudyArgs {
    /// The quick budget: every configuration as `pipeline --quick` (1 epoch on 5,000
    /// training images, 1,000 test images), a few minutes in all
    #[arg(long)]
    quick: bool,
    /// Training epochs of every configuration [default: 20, or 1 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// Seed of every configuration
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The page written [default: docs/study.md, or docs/study-quick.md with --quick]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the runs, one per configuration, named study-BUDGET-CONFIGURATION
    /// (BUDGET: quick, full for vae-train's default epochs, or N-epochs with --epochs N)
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Configurations trained at the same time (1 to 4). With more than one, each
    /// pipeline trains on cores / N threads and writes its output to
    /// RUNS/study-BUDGET-CONFIGURATION.log instead of the terminal
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    jobs: u32,
}

/// `(run-name suffix, what it is, extra pipeline flags)` of each configuration.
const CONFIGURATIONS: [(&str, &str, &[&str]); 4] = [
    ("vae", "VAE (the reference's objective)", &[]),
    ("beta4", "β-VAE, β = 4", &["--beta", "4"]),
    ("iwae5", "IWAE, K = 5", &["--iw-samples", "5"]),
    ("cb", "VAE, continuous Bernoulli", &["--likelihood", "continuous-bernoulli"]),
];

/// `cargo xtask pipeline`'s flags, parsed as the command line would.
#[derive(Parser)]
struct Pipeline {
    #[command(flatten)]
    args: PipelineArgs,
}

/// One configuration's pipeline: its label, run directory and flags besides `--out`.
struct Job {
    label: &'static str,
    dir: PathBuf,
    flags: Vec<String>,
}

impl Job {
    /// Runs `cargo xtask pipeline` as a child process (this binary), its output on the
    /// terminal or, with `log`, in that file.
    fn run(&self, log: Option<PathBuf>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut child = Command::new(exe);
        child.args(["pipeline", "--out"]).arg(&self.dir).args(&self.flags);
        if let Some(log) = &log {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            child.stdout(file.try_clone()?).stderr(file);
        }
        let status = child.status().with_context(|| format!("starting the pipeline of {}", self.label))?;
        if !status.success() {
            let shown = log.map_or(String::new(), |l| format!("; its output is in {}", l.display()));
            bail!("the pipeline of {} failed ({status}){shown}", self.label);
        }
        Ok(())
    }
}

/// Runs `jobs` with `parallel` of them at a time (each logging to a file when more than
/// one). After a failure no further job starts (those running finish), as in the
/// one-at-a-time case, and the first failure is returned.
fn run_jobs(jobs: &[Job], parallel: usize) -> anyhow::Result<()> {
    if parallel <= 1 {
        return jobs.iter().try_for_each(|job| job.run(None));
    }
    let queue = Mutex::new(jobs.iter());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    // The queue's lock is released at the end of this statement.
                    if !failures.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
                        break;
                    }
                    let Some(job) = queue.lock().unwrap_or_else(PoisonError::into_inner).next() else { break };
                    let log = job.dir.with_extension("log");
                    eprintln!("== {}: started, output in {}", job.label, log.display());
                    let outcome = job.run(Some(log));
                    eprintln!("== {}: {}", job.label, if outcome.is_ok() { "done" } else { "failed" });
                    if let Err(e) = outcome {
                        failures.lock().unwrap_or_else(PoisonError::into_inner).push(e);
                    }
                }
            });
        }
    });
    match failures.into_inner().unwrap_or_else(PoisonError::into_inner).into_iter().next() {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// The figures the page shows of each configuration, side by side, with their column headings.
const STUDY_FIGURES: [(&str, FigureFile); 3] = [
    ("loss per epoch", figure::LOSS),
    ("KL per latent dimension", figure::KL),
    ("prior draws decoded", figure::GENERATED),
];

/// Copies [`STUDY_FIGURES`] of every run into `study-BUDGET-figures/` beside the page `out`
/// (the runs themselves are not kept with it) and returns the page's section showing them.
fn copy_figures(jobs: &[Job], out: &std::path::Path, budget: &str) -> anyhow::Result<String> {
    let folder = format!("study-{budget}-figures");
    let target = out.parent().unwrap_or(std::path::Path::new(".")).join(&folder);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let mut section = String::from("Figures (one row per configuration):\n\n| configuration |");
    for (heading, _) in STUDY_FIGURES {
        write!(section, " {heading} |")?;
    }
    section.push_str(&format!("\n|---|{}\n", "---|".repeat(STUDY_FIGURES.len())));
    for job in jobs {
        let name = job.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        write!(section, "| {} |", job.label)?;
        for (_, fig) in STUDY_FIGURES {
            let from = job.dir.join(file::FIGURES_DIR).join(fig.file);
            let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            let copied = format!("{name}-{}", fig.file);
            vae_data::write_atomic(&target.join(&copied), &bytes)?;
            write!(section, " ![{}]({folder}/{copied}) |", fig.caption)?;
        }
        section.push('\n');
    }
    section.push('\n');
    Ok(section)
}

/// The flags this study was given that shape its page, as a command line would show them.
fn study_flags(args: &StudyArgs) -> String {
    let mut flags = String::new();
    if args.quick {
        flags.push_str(" --quick");
    }
    if let Some(epochs) = args.epochs {
        flags.push_str(&format!(" --epochs {epochs}"));
    }
    if args.seed != 0 {
        flags.push_str(&format!(" --seed {}", args.seed));
    }
    if args.jobs > 1 {
        flags.push_str(&format!(" --jobs {}", args.jobs));
    }
    flags
}

/// Runs every configuration and writes the page; returns its path.
pub fn run(args: &StudyArgs) -> anyhow::Result<PathBuf> {
    let budget = match (args.quick, args.epochs) {
        (true, None) => "quick".to_string(),
        (true, Some(epochs)) => format!("quick-{epochs}-epochs"),
        (false, None) => "full".to_string(),
        (false, Some(epochs)) => format!("{epochs}-epochs"),
    };
    let parallel = args.jobs as usize;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut commands = String::new();
    let mut jobs = Vec::new();
    for (suffix, label, flags) in CONFIGURATIONS {
        let name = format!("study-{budget}-{suffix}");
        let shown = args.runs.join(&name);
        let mut own = vec!["--seed".to_string(), args.seed.to_string()];
        own.extend(flags.iter().map(|f| f.to_string()));
        if args.quick {
            own.push("--quick".into());
        }
        if let Some(epochs) = args.epochs {
            own.extend(["--epochs".into(), epochs.to_string()]);
        }
        if parallel > 1 {
            own.extend(["--threads".into(), (cores / parallel).max(1).to_string()]);
        }
        let argv = [vec!["pipeline".to_string(), "--out".into(), shown.display().to_string()], own.clone()].concat();
        writeln!(commands, "- {label}: `cargo xtask {}`", argv.join(" "))?;
        // Every configuration's flags are checked before the first one trains.
        Pipeline::try_parse_from(&argv).with_context(|| format!("the flags of {label}"))?;
        jobs.push(Job { label, dir: project_root().join(&shown), flags: own });
    }
    run_jobs(&jobs, parallel)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| project_root().join(format!("docs/study{}.md", if args.quick { "-quick" } else { "" })));
    let figures = copy_figures(&jobs, &out, &budget)?;
    let mut table = String::from(
        "| configuration | test loss, z sampled | test loss, z = mean | IWAE bound (log p(x)) | active units | LinearSVC [mu \\| logvar] | LinearSVC mu | 10-NN mu | t-SNE 10-NN agreement | training seconds |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for Job { label, dir, .. } in &jobs {
        let history: Vec<EpochRecord> = read_json(&dir.join(file::HISTORY_JSON))?;
        let last = history.last().with_context(|| format!("{}: no epoch", dir.display()))?;
        let eval: EvalSummary = read_json(&dir.join(file::EVAL))?;
        let metrics: ClassifierSummary = read_json(&dir.join(file::METRICS))?;
        let tsne: TsneSummary = read_json(&dir.join(file::FIGURES_DIR).join(file::TSNE_JSON))?;
        let probes = metrics.mu_probes.as_ref();
        let seconds: f64 = history.iter().map(|h| h.seconds).sum();
        writeln!(
            table,
            "| {label} | {:.2} | {:.2} | {:.2} (k = {}) | {} of {} | {:.4} | {} | {} | {:.4} | {seconds:.0} |",
            last.test_loss,
            last.test_loss_at_mean,
            eval.iwae,
            eval.k,
            eval.active_units,
            eval.kl_per_dimension.len(),
            metrics.metrics.accuracy,
            probes.map_or("–".into(), |p| format!("{:.4}", p.linear_svc_accuracy)),
            probes.map_or("–".into(), |p| format!("{:.4}", p.knn10_accuracy)),
            tsne.knn10_label_agreement_embedding,
        )?;
    }
    let page = format!(
        "# Objectives side by side ({} budget)\n\n\
         Generated by `cargo xtask study{}`: each configuration trained and analysed by the whole \
         pipeline, same seed ({}), same budget, into `study-{budget}-*/` run directories (each run's `report.md` \
         has its figures){}. Losses are nats per image on the test set. The continuous Bernoulli's \
         losses and bound are log-densities of grey pixels, on another scale than the Bernoulli's: \
         compare it with the others by its probes, not its losses.\n\n{table}\n{figures}Commands:\n\n{commands}",
        budget.replace('-', " "),
        study_flags(args),
        args.seed,
        if parallel > 1 {
            format!(", {parallel} at a time on {cores} cores (so the training seconds are those of runs side by side)")
        } else {
            String::new()
        },
    );
    vae_data::write_atomic(&out, page.as_bytes())?;
    println!("{page}\nwritten to {}", out.display());
    Ok(out)
}
