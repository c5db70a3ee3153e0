//! `cargo xtask pipeline`: builds the stage binaries once, then runs each stage as its own
//! process, passing only paths. A stage is skipped when its outputs exist, are newer than
//! its inputs, and were made by the same command line (`--force` reruns everything);
//! training always resumes from its checkpoint.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};

use vae_data::run::{FIGURES, FIGURES_2D, file};

use crate::{cargo, project_root, report};

mod args;
pub use args::PipelineArgs;

/// The pipeline's own files in the run directory: the command and seconds of each stage
/// that ran, and the lock held while a pipeline runs.
const STAGES_DIR: &str = ".stages";
const LOCK_FILE: &str = ".lock";

/// Packages whose binaries are the stages (`vae-train` also holds `vae-eval`).
const STAGE_PACKAGES: [&str; 4] = ["vae-train", "latent-features", "classifier", "viz"];

/// One stage: its binary, arguments, and the files it reads and writes.
pub struct Stage {
    /// Short name, used in messages and the report.
    pub name: &'static str,
    binary: &'static str,
    args: Vec<String>,
    inputs: Vec<PathBuf>,
    /// Files the stage writes, relative to the run directory.
    pub outputs: Vec<PathBuf>,
}

/// How a stage went.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// The stage's name.
    pub name: &'static str,
    /// Wall-clock seconds of its latest run, this time or an earlier one (`None` when
    /// unknown).
    pub seconds: Option<f64>,
    /// Whether this pipeline skipped it as up to date.
    pub skipped: bool,
}

fn data_files(data: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(data) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// The stages for `run` with `args`, in order.
pub fn stages(args: &PipelineArgs, run: &Path) -> Vec<Stage> {
    let path = |name: &str| run.join(name).display().to_string();
    let data = args.data.display().to_string();
    let epochs = args.epochs.unwrap_or(if args.quick { 1 } else { 20 });
    let mut train = vec!["--data".into(), data.clone(), "--out".into(), run.display().to_string()];
    train.extend(["--epochs".into(), epochs.to_string(), "--seed".into(), args.seed.to_string(), "--resume".into()]);
    let mut features = vec!["--model".into(), path(file::MODEL), "--data".into(), data.clone()];
    features.extend(["--out".into(), run.display().to_string()]);
    let mut eval = vec!["--model".into(), path(file::MODEL), "--data".into(), data.clone()];
    eval.extend(["--out".into(), run.display().to_string(), "--seed".into(), args.seed.to_string()]);
    let mut viz = vec!["--run".into(), run.display().to_string(), "--data".into(), data, "--seed".into()];
    viz.push(args.seed.to_string());
    if let Some(b) = args.batch_size {
        train.extend(["--batch-size".into(), b.to_string()]);
    }
    if let Some(d) = args.latent_dim {
        train.extend(["--latent-dim".into(), d.to_string()]);
    }
    if let Some(likelihood) = &args.likelihood {
        for stage in [&mut train, &mut eval] {
            stage.extend(["--likelihood".into(), likelihood.clone()]);
        }
    }
    if let Some(precision) = &args.precision {
        for stage in [&mut train, &mut eval, &mut features] {
            stage.extend(["--precision".into(), precision.clone()]);
        }
    }
    if let Some(t) = args.threads {
        train.extend(["--threads".into(), t.to_string()]);
    }
    let recipe = [
        ("--recipe", args.recipe.clone()),
        ("--initial-batch-epochs", args.initial_batch_epochs.map(|x| x.to_string())),
        ("--initial-batch-size", args.initial_batch_size.map(|x| x.to_string())),
        ("--lr", args.lr.map(|x| x.to_string())),
        ("--lr-schedule", args.lr_schedule.clone()),
        ("--lr-final-fraction", args.lr_final_fraction.map(|x| x.to_string())),
        ("--warmup-epochs", args.warmup_epochs.map(|x| x.to_string())),
        ("--ema", args.ema.map(|x| x.to_string())),
        ("--beta", args.beta.map(|x| x.to_string())),
        ("--kl-warmup-epochs", args.kl_warmup_epochs.map(|x| x.to_string())),
        ("--iw-samples", args.iw_samples.map(|x| x.to_string())),
    ];
    for (flag, value) in recipe {
        if let Some(value) = value {
            train.extend([flag.to_string(), value]);
        }
    }
    if let Some(device) = args.device.as_ref().filter(|d| *d != "cpu") {
        for stage in [&mut train, &mut eval, &mut features] {
            stage.extend(["--device".into(), device.clone()]);
        }
    }
    if args.quick {
        train.extend(["--train-limit", "5000", "--test-limit", "1000"].map(String::from));
        features.extend(["--train-limit", "5000", "--test-limit", "1000"].map(String::from));
        viz.extend(["--tsne-points", "1000", "--tsne-iterations", "500"].map(String::from));
        eval.extend(["--test-limit", "500", "--k", "8"].map(String::from));
    }
    let classifier = [file::TRAIN_LATENTS, file::TRAIN_LABELS, file::TEST_LATENTS, file::TEST_LABELS];
    let classifier_args = ["--train", "--train-labels", "--test", "--test-labels"]
        .iter()
        .zip(classifier)
        .flat_map(|(flag, name)| [flag.to_string(), path(name)])
        .chain(["--out".into(), run.display().to_string(), "--seed".into(), args.seed.to_string()])
        .chain(["--rbf-samples".into(), if args.quick { "500" } else { "2000" }.into(), "--mu-probes".into()])
        .collect();
    let in_run = |names: &[&str]| names.iter().map(|n| run.join(n)).collect::<Vec<_>>();
    let names = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
    vec![
        Stage {
            name: "train",
            binary: "vae-train",
            args: train,
            inputs: data_files(&args.data),
            outputs: names(&[file::MODEL, file::HISTORY_NPY, file::HISTORY_JSON, file::SAMPLES, file::CONFIG]),
        },
        Stage {
            name: "eval",
            binary: "vae-eval",
            args: eval,
            inputs: [in_run(&[file::MODEL]), data_files(&args.data)].concat(),
            outputs: names(&[file::EVAL]),
        },
        Stage {
            name: "latent-features",
            binary: "latent-features",
            args: features,
            inputs: [in_run(&[file::MODEL]), data_files(&args.data)].concat(),
            outputs: names(&classifier),
        },
        Stage {
            name: "classifier",
            binary: "classifier",
            args: classifier_args,
            inputs: in_run(&classifier),
            outputs: names(&[file::METRICS, file::CONFUSION, file::TEST_PREDICTIONS, file::SVM]),
        },
        Stage {
            name: "viz",
            binary: "viz",
            args: viz,
            inputs: in_run(&[
                file::SAMPLES,
                file::HISTORY_JSON,
                file::TEST_LATENTS,
                file::CONFUSION,
                file::MODEL,
                file::EVAL,
            ]),
            outputs: FIGURES
                .iter()
                .chain(if args.latent_dim == Some(2) { &FIGURES_2D[..] } else { &[] })
                .map(|f| Path::new(file::FIGURES_DIR).join(f.file))
                .collect(),
        },
    ]
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Stage {
    fn command_line(&self, bin_dir: &Path) -> String {
        format!("{} {}", bin_dir.join(self.binary).display(), self.args.join(" "))
    }

    fn stamp(&self, run: &Path) -> PathBuf {
        run.join(STAGES_DIR).join(format!("{}.cmd", self.name))
    }

    /// Where the wall-clock seconds of the stage's latest run are kept, for the report.
    fn timing(&self, run: &Path) -> PathBuf {
        run.join(STAGES_DIR).join(format!("{}.seconds", self.name))
    }

    /// Whether the outputs exist, are newer than every input, came from this command, and
    /// were not rewritten since (by a stage run by hand, or one that failed part-way).
    fn up_to_date(&self, run: &Path, command_line: &str) -> bool {
        let stamp = self.stamp(run);
        let Ok(recorded) = fs::read_to_string(&stamp) else { return false };
        let Some(outputs) = self.outputs.iter().map(|o| modified(&run.join(o))).collect::<Option<Vec<_>>>() else {
            return false;
        };
        let (Some(oldest), Some(newest)) = (outputs.iter().min(), outputs.iter().max()) else { return false };
        let newest_input = self.inputs.iter().filter_map(|i| modified(i)).max();
        recorded == command_line
            && newest_input.is_none_or(|input| *oldest >= input)
            && modified(&stamp).is_some_and(|stamped| *newest <= stamped)
    }
}

/// An advisory lock (`flock`) on `RUN/.lock` that keeps a second pipeline out of the
/// same run directory. Taking it is one atomic system call, and the kernel releases it
/// when the holder exits, however it dies (`kill -9` included), so there is no stale lock
/// to detect or remove. The file is never deleted (deleting a locked file would let a
/// later pipeline lock a new file while an earlier one still holds the old); it holds the
/// holder's PID, for the refusal message, and is emptied on release.
struct RunLock(File);

impl RunLock {
    fn acquire(run: &Path) -> anyhow::Result<Self> {
        let path = run.join(LOCK_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the run lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path).unwrap_or_default();
                let pid = if pid.trim().is_empty() { "not yet written".to_string() } else { pid.trim().to_string() };
                bail!("{} is in use by another pipeline (pid {pid}); wait for it to finish or stop it", run.display());
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(file))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Still locked here: emptying the file tells a reader that nobody holds it.
        // Closing the file releases the lock.
        let _ = self.0.set_len(0);
    }
}

fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()).map(|s| s.trim().to_string()).unwrap_or_else(|| "run".into())
}

/// A command for a stage process that dies with the pipeline: after a `kill -9` of the
/// pipeline, an orphaned stage must not go on writing into a run directory that the
/// next pipeline (taking over the stale lock) is writing too.
fn stage_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The pipeline may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    command
}

/// Whether `name` is a device the stages accept: checked before a typo triggers a CUDA
/// build (the stages check again, with the build's own support).
fn is_device_name(name: &str) -> bool {
    name == "cpu" || name == "cuda" || name.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())
}

/// Runs the pipeline.
pub fn run(args: &PipelineArgs) -> anyhow::Result<()> {
    let root = project_root();
    let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", if args.quick { "quick" } else { "run" }, today()));
    let run = args.out.clone().unwrap_or_else(|| root.join("runs").join(&name));
    let run = if run.is_absolute() { run } else { std::env::current_dir()?.join(run) };
    let data = if args.data.is_absolute() { args.data.clone() } else { root.join(&args.data) };
    let args = PipelineArgs { data, ..args.clone() };
    if let Some(device) = args.device.as_deref().filter(|d| !is_device_name(d)) {
        bail!("unknown device '{device}': expected cpu, cuda or cuda:N");
    }
    fs::create_dir_all(run.join(STAGES_DIR)).with_context(|| format!("creating {}", run.display()))?;
    let _lock = RunLock::acquire(&run)?;

    eprintln!(
        "building the stage binaries (release; the first build compiles candle and linfa, about 5 minutes on 2 cores)…"
    );
    let mut build = cargo();
    // cargo's own progress (a bar on a terminal, one line per crate otherwise); with
    // nothing to build it prints a single `Finished` line.
    build.args(["build", "--release"]);
    for package in STAGE_PACKAGES {
        build.args(["-p", package]);
    }
    if args.device.as_ref().is_some_and(|d| d != "cpu") {
        build.args(["--features", "vae-train/cuda,latent-features/cuda"]);
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the stage binaries failed ({status})");
    }
    let bin_dir = crate::release_dir();

    let mut results = Vec::new();
    for stage in stages(&args, &run) {
        let command_line = stage.command_line(&bin_dir);
        if !args.force && stage.up_to_date(&run, &command_line) {
            eprintln!("== {}: up to date, skipped", stage.name);
            let seconds = fs::read_to_string(stage.timing(&run)).ok().and_then(|s| s.trim().parse().ok());
            results.push(StageResult { name: stage.name, seconds, skipped: true });
            continue;
        }
        eprintln!("== {}: {command_line}", stage.name);
        let _ = fs::remove_file(stage.stamp(&run));
        let started = Instant::now();
        let status = stage_command(&bin_dir.join(stage.binary))
            .args(&stage.args)
            .current_dir(&root)
            .status()
            .with_context(|| format!("starting stage {} ({command_line})", stage.name))?;
        if !status.success() {
            bail!("stage {} failed ({status})\n  command: {command_line}", stage.name);
        }
        let seconds = started.elapsed().as_secs_f64();
        vae_data::write_atomic(&stage.timing(&run), format!("{seconds:.1}\n").as_bytes())?;
        vae_data::write_atomic(&stage.stamp(&run), command_line.as_bytes())?;
        results.push(StageResult { name: stage.name, seconds: Some(seconds), skipped: false });
    }
    let summary = report::write(&run, &results)?;
    println!("{summary}");
    println!("{}", report::headline(&run));
    println!("report: {} (and report.html beside it, for a browser)", run.join(file::REPORT_MD).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pipeline_is_refused_and_a_dead_holders_lock_is_taken() {
        let run_tmp = tempfile::tempdir().unwrap();
        let run = run_tmp.path().to_path_buf();
        let lock = RunLock::acquire(&run).unwrap();
        assert_eq!(fs::read_to_string(run.join(LOCK_FILE)).unwrap().trim(), std::process::id().to_string());
        let err = RunLock::acquire(&run).err().unwrap().to_string();
        assert!(err.contains("in use by another pipeline"), "{err}");
        drop(lock);
        assert_eq!(fs::read_to_string(run.join(LOCK_FILE)).unwrap(), "", "released: emptied, not deleted");
        // A lock file left by a process that no longer exists holds no lock.
        fs::write(run.join(LOCK_FILE), "4294967\n").unwrap();
        drop(RunLock::acquire(&run).unwrap());
    }

    /// Many simultaneous takers (each its own open file, as separate processes would
    /// have): exactly one gets the lock while it is held.
    #[test]
    fn exactly_one_of_many_simultaneous_takers_gets_the_lock() {
        let run_tmp = tempfile::tempdir().unwrap();
        let run = run_tmp.path().to_path_buf();
        for round in 0..5 {
            let barrier = std::sync::Barrier::new(24);
            let taken: Vec<bool> = std::thread::scope(|scope| {
                let takers: Vec<_> = (0..24)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            let lock = RunLock::acquire(&run);
                            // Every taker has tried before the winner lets go.
                            barrier.wait();
                            lock.is_ok()
                        })
                    })
                    .collect();
                takers.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert_eq!(taken.iter().filter(|&&t| t).count(), 1, "round {round}: {taken:?}");
        }
    }

    /// `--device` and `--precision` reach the three stages that run the model, no other.
    #[test]
    fn device_and_precision_reach_the_model_stages_only() {
        let args = |device: Option<&str>, precision: Option<&str>| PipelineArgs {
            name: None,
            out: None,
            data: PathBuf::from("data/mnist"),
            epochs: None,
            batch_size: None,
            initial_batch_epochs: None,
            initial_batch_size: None,
            latent_dim: None,
            likelihood: None,
            iw_samples: None,
            seed: 0,
            recipe: None,
            lr: None,
            lr_schedule: None,
            lr_final_fraction: None,
            warmup_epochs: None,
            ema: None,
            beta: None,
            kl_warmup_epochs: None,
            precision: precision.map(String::from),
            threads: None,
            device: device.map(String::from),
            quick: true,
            force: false,
        };
        let with = |args: PipelineArgs, flag: &str, value: &str| -> Vec<&str> {
            stages(&args, Path::new("/tmp/run"))
                .into_iter()
                .filter(|stage| stage.args.windows(2).any(|w| w[0] == flag && w[1] == value))
                .map(|stage| stage.name)
                .collect()
        };
        let with_device = |device| with(args(device, None), "--device", "cuda:1");
        assert_eq!(with_device(Some("cuda:1")), ["train", "eval", "latent-features"]);
        assert!(with_device(None).is_empty());
        assert_eq!(with(args(None, Some("bf16")), "--precision", "bf16"), ["train", "eval", "latent-features"]);
        assert!(with(args(None, None), "--precision", "bf16").is_empty());
        assert!(["cpu", "cuda", "cuda:1"].iter().all(|d| is_device_name(d)));
        assert!(["gpu", "cuda:", "cuda:x", "CPU"].iter().all(|d| !is_device_name(d)));
        let cpu = stages(&args(Some("cpu"), None), Path::new("/tmp/run"));
        assert!(cpu.iter().all(|stage| !stage.args.contains(&"--device".to_string())), "cpu is the default");
    }
}
