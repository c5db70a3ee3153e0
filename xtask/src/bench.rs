//! `cargo xtask bench`: the throughput benchmark, and with `--pytorch PYTHON` the training
//! step, the encoder and one training pass (a whole `vae-train` process against PyTorch's
//! bare loop on the same MNIST images) measured side by side with PyTorch's (f32 and bf16
//! autocast), interleaved round by round in the same minutes (these VMs drift 1.5–2×),
//! with the ratios printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, project_root, release_dir};

/// Flags of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Fewer repetitions (a rough figure in about a minute)
    #[arg(long)]
    quick: bool,
    /// Run only this section (repeatable): peak, step, autograd, ops, encoder, evaluation,
    /// classifier, tsne
    #[arg(long)]
    only: Vec<String>,
    /// Instead: our training step and encoder against PyTorch's
    /// (crates/bench/pytorch_step.py run by this Python, which must have torch),
    /// f32 and bf16 autocast, interleaved for --rounds rounds
    #[arg(long, value_name = "PYTHON")]
    pytorch: Option<PathBuf>,
    /// Time a trained model (a `vae-train` model.safetensors) instead of a freshly
    /// initialised one: our training step and encoder and, with --pytorch, PyTorch's
    /// (which then needs the `safetensors` package); our training pass, a whole
    /// `vae-train` run, still starts from the initialisation
    #[arg(long, value_name = "MODEL")]
    weights: Option<PathBuf>,
    /// Rounds of the side-by-side comparison
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
}

/// Runs the benchmark as `args` say.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // Absolute: each bench runs in its own crate's directory.
    let weights = match &args.weights {
        Some(path) => Some(std::fs::canonicalize(path).with_context(|| format!("--weights {}", path.display()))?),
        None => None,
    };
    match &args.pytorch {
        None => {
            let output = ours(args.quick, &args.only, false, weights.as_deref())?;
            print!("{output}");
            Ok(())
        }
        Some(python) => side_by_side(python, args.rounds, weights.as_deref()),
    }
}

/// Each bench, in the crate that owns what it measures, with the sections it runs.
const BENCHES: [(&str, &str, &[&str]); 4] = [
    ("vae-bench", "throughput", &["peak", "step", "autograd"]),
    ("vae-model", "model", &["ops", "encoder", "evaluation"]),
    ("classifier", "svm", &["classifier"]),
    ("viz", "tsne", &["tsne"]),
];

/// The benches that time the model (and take `--weights`).
const MODEL_BENCHES: [&str; 2] = ["throughput", "model"];

/// Runs the benches that hold the sections in `only` (all when empty), those of the
/// model from `weights` if given; returns their standard output (streamed to the
/// terminal as well unless `capture`).
fn ours(quick: bool, only: &[String], capture: bool, weights: Option<&Path>) -> anyhow::Result<String> {
    let known: Vec<&str> = BENCHES.iter().flat_map(|(_, _, sections)| sections.iter().copied()).collect();
    if let Some(unknown) = only.iter().find(|s| !known.contains(&s.as_str())) {
        bail!("unknown section '{unknown}' for --only: expected one of {}", known.join(", "));
    }
    let mut stdout = String::new();
    for (package, bench, sections) in BENCHES {
        let wanted: Vec<&str> =
            sections.iter().copied().filter(|s| only.is_empty() || only.iter().any(|o| o == s)).collect();
        if wanted.is_empty() {
            continue;
        }
        let mut cmd = cargo();
        cmd.args(["bench", "-p", package, "--bench", bench, "--"]);
        if quick {
            cmd.arg("--quick");
        }
        if let Some(weights) = weights.filter(|_| MODEL_BENCHES.contains(&bench)) {
            cmd.arg("--weights").arg(weights);
        }
        if !only.is_empty() && sections.len() > 1 {
            for section in wanted {
                cmd.args(["--only", section]);
            }
        }
        if !capture {
            let status = cmd.status().context("running cargo bench")?;
            if !status.success() {
                bail!("the benchmark {package}/{bench} failed ({status})");
            }
            continue;
        }
        let output = cmd.output().context("running cargo bench")?;
        if !output.status.success() {
            bail!(
                "the benchmark {package}/{bench} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        stdout.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(stdout)
}

/// The figures compared, as the lines of both benchmarks name them.
const FIGURES: [&str; 4] = ["training step, batch 128", "training step, batch  32", "encoder, 500 images", PASS_FIGURE];

/// The number of training images of the pass compared, for both constants below.
macro_rules! pass_images {
    () => {
        "6400"
    };
}

/// The training pass compared: [`PASS_IMAGES`] MNIST training images at batch 128.
const PASS_FIGURE: &str = concat!("training pass, ", pass_images!(), " images at batch 128");
const PASS_IMAGES: &str = pass_images!();

/// One training pass over the first [`PASS_IMAGES`] training images at batch 128 as a
/// whole `vae-train` process (start-up, data, a test pass on 100 images and every output
/// written and synced included; no weight average, which PyTorch's loop does not keep),
/// in milliseconds, `precision` f32 or bf16.
fn our_pass(precision: &str) -> anyhow::Result<f64> {
    let out = std::env::temp_dir().join(format!("xtask-bench-pass-{}", std::process::id()));
    let data = project_root().join("data/mnist");
    let mut cmd = Command::new(release_dir().join("vae-train"));
    cmd.arg("--data").arg(&data).arg("--out").arg(&out);
    cmd.args(["--epochs", "1", "--batch-size", "128", "--initial-batch-epochs", "0", "--ema", "0"]);
    cmd.args(["--train-limit", PASS_IMAGES, "--test-limit", "100", "--precision", precision]);
    let started = std::time::Instant::now();
    let output = cmd.output().context("running vae-train (cargo build --release -p vae-train first)");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&out);
    let output = output?;
    if !output.status.success() {
        bail!("vae-train failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(ms)
}

/// Milliseconds of each figure in a benchmark's output (`NAME: 123.4 ms ...` lines, or
/// `NAME (bf16): ...` ones with `suffix` " (bf16)").
fn parse(output: &str, suffix: &str) -> BTreeMap<&'static str, f64> {
    let mut found = BTreeMap::new();
    for line in output.lines() {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let Some(figure) = FIGURES.iter().find(|f| name.trim().strip_suffix(suffix) == Some(f.trim())) else {
            continue;
        };
        if let Some(ms) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            found.insert(*figure, ms);
        }
    }
    found
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Our step, encoder and training pass and PyTorch's (`python` running
/// crates/bench/pytorch_step.py), interleaved for `rounds` rounds, then the medians and
/// their ratios.
fn side_by_side(python: &Path, rounds: u32, weights: Option<&Path>) -> anyhow::Result<()> {
    let script = project_root().join("crates/bench/pytorch_step.py");
    let threads = std::thread::available_parallelism().map_or(2, usize::from).to_string();
    let torch = |bf16: bool| -> anyhow::Result<String> {
        let mut cmd = Command::new(python);
        cmd.arg(&script).args(["--threads", &threads, "--pass-images", PASS_IMAGES]);
        cmd.arg("--mnist").arg(project_root().join("data/mnist"));
        if bf16 {
            cmd.arg("--bf16");
        }
        if let Some(weights) = weights {
            cmd.arg("--weights").arg(weights);
        }
        let output = cmd.output().with_context(|| format!("running {}", python.display()))?;
        if !output.status.success() {
            bail!("{} {} failed:\n{}", python.display(), script.display(), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // Without native bf16 arithmetic PyTorch's bf16 autocast is emulated, 10-40× slower
    // than f32 (measured on a Zen 3): not a comparison worth minutes per round.
    let bf16 = native_bf16();
    println!(
        "CPU: {}, {threads} threads; {}; {rounds} rounds of: ours, PyTorch f32{}",
        cpu_model(),
        weights.map_or("initialised models".into(), |w| format!("the model {}", w.display())),
        if bf16 { ", PyTorch bf16 autocast" } else { " (no native bf16 on this CPU: bf16 autocast skipped)" }
    );
    // Ours f32, PyTorch f32, PyTorch bf16 autocast, ours with --precision bf16 (where
    // the CPU has AVX-512 BF16: the bench prints those lines only then).
    let our_bf16 = cpu_flag("avx512_bf16");
    let status = cargo().args(["build", "--release", "-p", "vae-train", "--bin", "vae-train"]).status();
    if !status.context("running cargo build")?.success() {
        bail!("building vae-train failed");
    }
    let mut samples: [BTreeMap<&str, Vec<f64>>; 4] = Default::default();
    for round in 1..=rounds {
        let ours = ours(true, &["step".into(), "encoder".into()], true, weights)?;
        let (mut f32_, mut bf16_) = (parse(&ours, ""), parse(&ours, " (bf16)"));
        f32_.insert(PASS_FIGURE, our_pass("f32")?);
        if our_bf16 {
            bf16_.insert(PASS_FIGURE, our_pass("bf16")?);
        }
        let outputs =
            [f32_, parse(&torch(false)?, ""), if bf16 { parse(&torch(true)?, "") } else { BTreeMap::new() }, bf16_];
        for (kind, output) in samples.iter_mut().zip(outputs) {
            for (figure, ms) in output {
                kind.entry(figure).or_default().push(ms);
            }
        }
        let line: Vec<String> = FIGURES
            .iter()
            .map(|f| {
                let last = |k: usize| ms(samples[k].get(f).and_then(|v| v.last().copied()));
                let (name, a, b, c, d) = (f.replace("  ", " "), last(0), last(1), last(2), last(3));
                format!("{name}: {a} / {b} / {c} ms, ours bf16 {d} ms")
            })
            .collect();
        println!("round {round}: {}", line.join("; "));
    }
    println!(
        "\n| figure (median of {rounds} rounds) | ours f32 | PyTorch f32 | ratio | PyTorch bf16 | ratio | \
         ours bf16 | ratio to PyTorch f32 | to PyTorch bf16 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for figure in FIGURES {
        let med = |k: usize| samples[k].get(figure).cloned().map(median);
        let (ours, f32_, bf16, ours_bf16) = (med(0), med(1), med(2), med(3));
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("—".into(), |(a, b)| format!("{:.2}×", a / b));
        println!(
            "| {} | {} ms | {} ms | {} | {} ms | {} | {} ms | {} | {} |",
            figure.replace("  ", " "),
            ms(ours),
            ms(f32_),
            ratio(f32_, ours),
            ms(bf16),
            ratio(bf16, ours),
            ms(ours_bf16),
            ratio(f32_, ours_bf16),
            ratio(bf16, ours_bf16)
        );
    }
    Ok(())
}

/// Milliseconds to one decimal, or "—" for a figure not measured (bf16 on a CPU without it).
fn ms(value: Option<f64>) -> String {
    value.map_or("—".into(), |v| format!("{v:.1}"))
}

/// Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16, as the kernel
/// reports them).
fn native_bf16() -> bool {
    cpu_flag("avx512_bf16") || cpu_flag("amx_bf16")
}

/// Whether the kernel lists `flag` among the CPU's.
fn cpu_flag(flag: &str) -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.split_whitespace().any(|f| f == flag)
}

/// The CPU's model name, from the kernel (xtask does not link the model crate).
fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|n| n.trim_start_matches([' ', '\t', ':']));
    name.unwrap_or("unknown").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_benchmarks_lines_are_read() {
        let ours = "training step, batch 128:    269.0 ms (spread 258.1–281.0)  475 images/s\n\
                    training step, batch 128 (candle autograd):    635.0 ms (spread 1–2)\n\
                    encoder, 500 images:    141.2 ms (spread 1–2)    3535 images/s\n\
                    encoder, 500 images (candle graph):    224.0 ms (spread 1–2)\n\
                    encoder, 500 images (bf16):    61.0 ms (spread 1–2)";
        let torch = "torch 2.15.0, 2 threads\ntraining step, batch  32:   240.5 ms (spread 230.0-250.1)    133 images/s\n\
                     training pass, 6400 images at batch 128:  9012.5 ms     710 images/s";
        let parsed = parse(ours, "");
        assert_eq!(parsed.get(FIGURES[0]), Some(&269.0));
        assert_eq!(parsed.get(FIGURES[2]), Some(&141.2), "the candle-graph line is another figure");
        assert_eq!(parsed.len(), 2);
        let bf16 = parse(ours, " (bf16)");
        assert_eq!((bf16.get(FIGURES[2]), bf16.len()), (Some(&61.0), 1));
        assert_eq!(parse(torch, "").get(FIGURES[1]), Some(&240.5));
        assert_eq!(parse(torch, "").get(PASS_FIGURE), Some(&9012.5));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
