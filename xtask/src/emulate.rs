//! `cargo xtask emulate`: the kernels' tests and a short training run on an emulated CPU
//! without AVX-512 (QEMU's user mode), so that a machine with AVX-512 checks the path the
//! same binary takes on an AVX2 one (an AMD Zen 3, an older Intel core): that the run-time
//! dispatch picks the AVX2 kernels there, that nothing executes an AVX-512 instruction
//! (QEMU has none: it would stop the process), and that those kernels train to what this
//! machine's do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{cargo, project_root};

/// QEMU's CPU model emulated by default: an AMD Zen 3 (AVX2 and FMA, no AVX-512).
pub const DEFAULT_CPU: &str = "EPYC-Milan";

/// QEMU's user-mode emulator for x86-64 programs (Debian's package qemu-user).
pub const DEFAULT_QEMU: &str = "qemu-x86_64";

/// Flags of `cargo xtask emulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulateArgs {
    /// QEMU's CPU model to emulate (`qemu-x86_64 -cpu help` lists them), one with AVX2
    /// and FMA (QEMU has no AVX-512): the check expects the AVX2 kernels. The default,
    /// EPYC-Milan, is an AMD Zen 3; Haswell is an Intel core of that kind
    #[arg(long, default_value = DEFAULT_CPU)]
    cpu: String,
    /// QEMU's user-mode emulator (Debian's package qemu-user)
    #[arg(long, default_value = DEFAULT_QEMU)]
    qemu: PathBuf,
}

/// The library crates with code chosen by the CPU's instruction sets at run time: the
/// model's kernels, Adam's update, the classifier's solver.
const DISPATCHING_CRATES: [&str; 3] = ["vae_model", "vae_train", "classifier"];

/// Tests that cannot pass under QEMU's user mode: it passes the host's /proc/cpuinfo
/// through while CPUID names the emulated CPU.
const HOST_ONLY_TESTS: [&str; 1] = ["machine::tests::the_cpu_model_is_the_one_linux_reports"];

/// The training run done natively and emulated: the default recipe's two epochs (4 steps
/// at batch 32, then one on all 128 images, through the wide products' blocked path) with
/// their test passes, small enough for QEMU (its AVX2 runs 40–130× slower than the CPU
/// it emulates on).
const TRAIN_ARGS: [&str; 8] = ["--epochs", "2", "--train-limit", "128", "--test-limit", "32", "--seed", "0"];

/// Largest relative difference allowed between a loss trained natively and emulated:
/// float rounding of kernels that may sum in another order, far below any real fault.
const LOSS_TOLERANCE: f64 = 1e-4;

/// Runs the check as `args` say.
pub fn run(args: &EmulateArgs) -> anyhow::Result<()> {
    if let Some(why) = unavailable(&args.qemu) {
        bail!("{why}; name another emulator with --qemu");
    }
    check(&args.qemu, &args.cpu)
}

/// Why the check cannot run here, if it cannot: it needs an x86-64 machine (the binaries
/// it emulates are this machine's) and `qemu` that starts.
pub fn unavailable(qemu: &Path) -> Option<String> {
    if !cfg!(target_arch = "x86_64") {
        return Some("the emulated AVX2 CPU needs an x86-64 machine".to_string());
    }
    let starts = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    (!starts).then(|| format!("{} does not run (Debian: apt-get install qemu-user)", qemu.display()))
}

/// The tests of [`DISPATCHING_CRATES`] and [`compare_training`] on `cpu` emulated by `qemu`.
pub fn check(qemu: &Path, cpu: &str) -> anyhow::Result<()> {
    let emulated = Emulator { qemu, cpu };
    let started = Instant::now();
    let built = Built::build()?;
    for test in &built.tests {
        eprintln!("$ {} -cpu {cpu} {}", qemu.display(), test.display());
        let mut cmd = emulated.command(test);
        for name in HOST_ONLY_TESTS {
            cmd.args(["--skip", name]);
        }
        let output = cmd
            .stdout(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} under QEMU", test.display()))?;
        eprint!("{}", without_feature_warnings(&output.stderr));
        if !output.status.success() {
            bail!("{} failed on the emulated {cpu} ({})", test.display(), output.status);
        }
    }
    let tests = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let trained = compare_training(&emulated, &built.vae_train)?;
    println!(
        "emulated {cpu}: the tests of {} passed ({tests:.0} s); {trained} ({:.0} s)",
        DISPATCHING_CRATES.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `stderr` without QEMU's warnings about the CPU model's features that its translator
/// lacks (dozens at the start of every process).
fn without_feature_warnings(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|line| !line.contains(": warning: TCG doesn't support requested feature"))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// QEMU's user mode emulating one CPU model.
struct Emulator<'a> {
    qemu: &'a Path,
    cpu: &'a str,
}

impl Emulator<'_> {
    /// A command running `program` on the emulated CPU.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.args(["-cpu", self.cpu]).arg(program);
        cmd
    }
}

/// What `cargo test --workspace --release` builds (so that CI reuses its build): the
/// library test executables of [`DISPATCHING_CRATES`], and `vae-train`.
struct Built {
    tests: Vec<PathBuf>,
    vae_train: PathBuf,
}

impl Built {
    fn build() -> anyhow::Result<Self> {
        let output = cargo()
            .args(["test", "--workspace", "--release", "--no-run", "--message-format=json-render-diagnostics"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo test --no-run")?;
        if !output.status.success() {
            bail!("building the tests failed ({})", output.status);
        }
        let built = Self::from_messages(&String::from_utf8_lossy(&output.stdout));
        if built.tests.len() != DISPATCHING_CRATES.len() {
            bail!("cargo built tests for {:?}, expected those of {DISPATCHING_CRATES:?}", built.tests);
        }
        built.vae_train.is_file().then_some(built).context("cargo built no vae-train executable")
    }

    /// The executables in cargo's JSON messages.
    fn from_messages(messages: &str) -> Self {
        let mut built = Self { tests: Vec::new(), vae_train: PathBuf::new() };
        for line in messages.lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let (target, test) = (&message["target"], message["profile"]["test"] == true);
            let is = |kind: &str| target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == kind));
            let name = target["name"].as_str().unwrap_or_default();
            let Some(executable) = message["executable"].as_str().filter(|_| message["reason"] == "compiler-artifact")
            else {
                continue;
            };
            if test && is("lib") && DISPATCHING_CRATES.contains(&name) {
                built.tests.push(PathBuf::from(executable));
            } else if !test && is("bin") && name == "vae-train" {
                built.vae_train = PathBuf::from(executable);
            }
        }
        built
    }
}

/// Trains with [`TRAIN_ARGS`] natively and on the emulated CPU; checks that the emulated
/// run recorded AVX2 kernels, that its losses are this machine's within
/// [`LOSS_TOLERANCE`], and that bf16 is refused there with a message. Returns a summary.
fn compare_training(emulated: &Emulator, vae_train: &Path) -> anyhow::Result<String> {
    let scratch = scratch_dir()?;
    let result = compare_training_in(&scratch, emulated, vae_train);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// [`compare_training`] with its runs written under `scratch`.
fn compare_training_in(scratch: &Path, emulated: &Emulator, vae_train: &Path) -> anyhow::Result<String> {
    let train = |cmd: &mut Command, out: &Path| -> anyhow::Result<Output> {
        cmd.arg("--data").arg(project_root().join("data/mnist")).arg("--out").arg(out).args(TRAIN_ARGS);
        cmd.output().context("running vae-train")
    };
    let (native_dir, emulated_dir) = (scratch.join("native"), scratch.join("emulated"));
    for (mut cmd, out) in [(Command::new(vae_train), &native_dir), (emulated.command(vae_train), &emulated_dir)] {
        let output = train(&mut cmd, out)?;
        if !output.status.success() {
            bail!("vae-train failed ({}):\n{}", output.status, without_feature_warnings(&output.stderr));
        }
    }
    let kernels = read_json(&emulated_dir.join("config.json"))?["machine"]["gemm_kernels"].clone();
    if kernels != "AVX2+FMA" {
        bail!("on the emulated {} vae-train recorded {kernels} kernels, expected AVX2+FMA", emulated.cpu);
    }
    let worst = largest_loss_difference(
        &read_json(&native_dir.join("history.json"))?,
        &read_json(&emulated_dir.join("history.json"))?,
    )?;
    if worst > LOSS_TOLERANCE {
        bail!(
            "the emulated run's losses differ from this machine's by {worst:e} (relative), more than {LOSS_TOLERANCE:e}"
        );
    }
    let model_bytes = |dir: &Path| {
        let path = dir.join("model.safetensors");
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let same_model = model_bytes(&native_dir)? == model_bytes(&emulated_dir)?;
    let refused = train(emulated.command(vae_train).args(["--precision", "bf16"]), &scratch.join("bf16"))?;
    let message = without_feature_warnings(&refused.stderr);
    if refused.status.success() || !message.contains("needs a CPU with AVX-512 BF16") {
        bail!("--precision bf16 was not refused on the emulated {} ({}):\n{message}", emulated.cpu, refused.status);
    }
    let losses = if worst == 0.0 { "the same losses".to_string() } else { format!("losses within {worst:.1e}") };
    let model = if same_model { "the same bytes" } else { "other bytes" };
    Ok(format!(
        "vae-train took AVX2+FMA kernels and trained to {losses} as on this machine (model.safetensors: {model}); bf16 refused"
    ))
}

/// A fresh directory for the runs under the system's temporary directory.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-emulate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The history's losses (train, test sampled and at the mean, every epoch) compared: the
/// largest relative difference.
fn largest_loss_difference(a: &serde_json::Value, b: &serde_json::Value) -> anyhow::Result<f64> {
    let losses = |h: &serde_json::Value| -> anyhow::Result<Vec<f64>> {
        let epochs = h.as_array().context("history.json is not a list of epochs")?;
        epochs
            .iter()
            .flat_map(|e| ["train_loss", "test_loss", "test_loss_at_mean"].map(|key| e[key].as_f64()))
            .collect::<Option<Vec<f64>>>()
            .context("history.json lacks a loss")
    };
    let (a, b) = (losses(a)?, losses(b)?);
    if a.len() != b.len() || a.is_empty() {
        bail!("the two runs recorded {} and {} losses", a.len(), b.len());
    }
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x.abs().max(1e-12)).fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the library tests of the dispatching crates, and the `vae-train` binary,
    /// from cargo's messages.
    #[test]
    fn picks_the_library_tests_of_the_dispatching_crates_and_vae_train() {
        let message = |name: &str, kind: &str, test: bool, exe: Option<&str>| {
            serde_json::json!({"reason": "compiler-artifact", "target": {"name": name, "kind": [kind]},
                "profile": {"test": test}, "executable": exe})
            .to_string()
        };
        let messages = [
            message("vae_model", "lib", true, Some("/t/vae_model-1")),
            message("vae_model", "lib", false, None),
            message("model", "test", true, Some("/t/model-2")),
            message("viz", "lib", true, Some("/t/viz-3")),
            message("vae-train", "bin", true, Some("/t/vae_train-5")),
            message("vae-train", "bin", false, Some("/t/vae-train")),
            message("classifier", "lib", true, Some("/t/classifier-4")),
            "Compiling noise".to_string(),
        ]
        .join("\n");
        let built = Built::from_messages(&messages);
        assert_eq!(built.tests, [PathBuf::from("/t/vae_model-1"), PathBuf::from("/t/classifier-4")]);
        assert_eq!(built.vae_train, PathBuf::from("/t/vae-train"));
    }

    #[test]
    fn qemu_feature_warnings_are_left_out() {
        let stderr = b"qemu-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.pcid [bit 17]\n\
            Error: bf16 precision needs a CPU with AVX-512 BF16\n";
        assert_eq!(without_feature_warnings(stderr), "Error: bf16 precision needs a CPU with AVX-512 BF16\n");
    }

    #[test]
    fn losses_compare_relatively_and_mismatches_are_errors() {
        let epoch = |l: f64| serde_json::json!({"train_loss": l, "test_loss": 100.0, "test_loss_at_mean": 90.0});
        let a = serde_json::json!([epoch(200.0), epoch(150.0)]);
        let b = serde_json::json!([epoch(200.0), epoch(150.015)]);
        assert!((largest_loss_difference(&a, &b).unwrap() - 1e-4).abs() < 1e-9);
        assert!(largest_loss_difference(&a, &serde_json::json!([epoch(200.0)])).is_err());
        assert!(largest_loss_difference(&a, &serde_json::json!([{"train_loss": 1.0}, epoch(1.0)])).is_err());
    }
}
