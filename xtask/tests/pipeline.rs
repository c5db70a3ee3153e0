//! Runs `cargo xtask pipeline --quick` end to end on the real MNIST files and checks the
//! files of the README's stage table: present, with the documented shapes and dtypes;
//! then kills it at random moments and fails its writes, and checks that nothing is lost.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vae_data::read_npy;

fn shape_f32(path: &Path, dims: &[Option<usize>]) -> Vec<usize> {
    read_npy(path).unwrap().into_f32(path, dims).unwrap_or_else(|e| panic!("{e}")).0
}

fn shape_i64(path: &Path, dims: &[Option<usize>]) -> Vec<usize> {
    read_npy(path).unwrap().into_i64(path, dims).unwrap_or_else(|e| panic!("{e}")).0
}

#[test]
fn quick_pipeline_writes_every_documented_output_and_skips_when_up_to_date() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let out_tmp = tempfile::tempdir().unwrap();
    let out = out_tmp.path().to_path_buf();
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["pipeline", "--quick", "--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "pipeline failed:\n{text}");
        text
    };
    let first = run(&[]);
    assert!(first.contains("| accuracy |"), "summary table printed:\n{first}");

    let f = |name: &str| out.join(name);
    assert_eq!(shape_f32(&f("history.npy"), &[Some(1), Some(10)]), vec![1, 10]);
    assert_eq!(shape_f32(&f("train_latents.npy"), &[Some(5000), Some(20)]), vec![5000, 20]);
    assert_eq!(shape_f32(&f("test_latents.npy"), &[Some(1000), Some(20)]), vec![1000, 20]);
    assert_eq!(shape_i64(&f("train_labels.npy"), &[Some(5000)]), vec![5000]);
    assert_eq!(shape_i64(&f("test_labels.npy"), &[Some(1000)]), vec![1000]);
    assert_eq!(shape_i64(&f("confusion.npy"), &[Some(10), Some(10)]), vec![10, 10]);
    assert_eq!(shape_i64(&f("test_predictions.npy"), &[Some(1000)]), vec![1000]);
    assert_eq!(shape_f32(&f("figures/tsne.npy"), &[Some(1000), Some(2)]), vec![1000, 2]);
    let device = candle_core::Device::Cpu;
    let (svm, _) = vae_model::read_tensors(&f("svm.safetensors"), &device).unwrap();
    assert_eq!(svm["weight"].dims(), &[10, 20]);
    assert_eq!(svm["bias"].dims(), &[10]);
    let (model, _) =
        vae_model::load_varmap(&f("model.safetensors"), &vae_model::VaeConfig::default(), &device).unwrap();
    assert_eq!(model.all_vars().len(), 22);
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(f("metrics.json")).unwrap()).unwrap();
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5, "one quick epoch already separates digits far above chance: {accuracy}");
    for name in ["config.json", "history.json", "samples.safetensors", "checkpoint.safetensors"] {
        assert!(f(name).is_file(), "{name}");
    }
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(f("eval.json")).unwrap()).unwrap();
    let (elbo, iwae) = (eval["elbo"].as_f64().unwrap(), eval["iwae"].as_f64().unwrap());
    assert!(elbo < 0.0 && iwae >= elbo, "IWAE bound {iwae} at least the ELBO {elbo}");
    let report = std::fs::read_to_string(f("report.md")).unwrap();
    for figure in vae_data::run::FIGURES.map(|f| f.file) {
        assert!(report.contains(&format!("figures/{figure}")), "report.md references {figure}");
        let png = image_size(&f(&format!("figures/{figure}")));
        assert!(png.0 > 50 && png.1 > 50, "{figure} is a real image: {png:?}");
    }

    let html = std::fs::read_to_string(f("report.html")).unwrap();
    let figures = vae_data::run::FIGURES.len();
    assert_eq!(html.matches("<img src=\"figures/").count(), figures, "report.html shows every figure");
    assert!(html.contains("test loss, z = mean") && first.contains("LinearSVC test accuracy 0."), "{first}");
    check_in_chromium(&f("report.html"));

    // A second run finds every stage up to date.
    let second = run(&[]);
    assert_eq!(second.matches("up to date, skipped").count(), 5, "{second}");

    // A damaged model is rewritten from the checkpoint, without training, and the stages
    // that read it run again.
    let model = f("model.safetensors");
    let whole = std::fs::read(&model).unwrap();
    std::fs::write(&model, &whole[..whole.len() / 2]).unwrap();
    let repaired = run(&[]);
    assert!(repaired.contains("== train: ") && repaired.contains("== latent-features: "), "{repaired}");
    assert!(repaired.contains("rewrote the training outputs from"), "{repaired}");
    assert_eq!(std::fs::read(&model).unwrap(), whole, "the model is rewritten, bit for bit, from the checkpoint");
}

/// Flags the stages would refuse are refused before the run directory is made.
#[test]
fn invalid_pipeline_flags_are_refused_before_anything_is_written() {
    let out_tmp = tempfile::tempdir().unwrap();
    let out = out_tmp.path().join("runs");
    for flags in [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--threads", "0"],
        ["--batch-size", "1025"],
        ["--ema", "1"],
        ["--lr", "-1"],
        ["--lr-schedule", "linear"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["pipeline", "--out", out.to_str().unwrap()])
            .arg(format!("{}={}", flags[0], flags[1]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(flags[0]), "{flags:?}: {stderr}");
        assert!(!out.exists(), "{flags:?} created {}", out.display());
    }
}

/// Twenty pipelines started at once on one run directory: exactly one gets past the lock
/// (it is then stopped); the others are refused with a clear message.
#[test]
fn of_twenty_simultaneous_pipelines_exactly_one_runs() {
    let out_tmp = tempfile::tempdir().unwrap();
    let out = out_tmp.path().to_path_buf();
    let mut children: Vec<_> = (0..20)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_xtask"))
                .args(["pipeline", "--quick", "--out", out.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap()
        })
        .collect();
    let mut refused = 0;
    let started = Instant::now();
    while refused < 19 && started.elapsed() < Duration::from_secs(120) {
        for child in &mut children {
            if child.try_wait().unwrap().is_some() && child.stderr.is_some() {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
                assert!(text.contains("in use by another pipeline"), "a pipeline ended otherwise:\n{text}");
                refused += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let running: Vec<u32> =
        children.iter_mut().filter_map(|c| c.try_wait().unwrap().is_none().then(|| c.id())).collect();
    for child in &mut children {
        // SAFETY: kill(2) of the process groups this test started.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
    }
    assert_eq!((refused, running.len()), (19, 1), "19 refused, one still running");
}

/// Opens `report.html` in headless Chromium (Debian's `chromium`, when installed) and
/// checks that every image loaded; skipped, saying so, where Chromium is absent.
fn check_in_chromium(report: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        eprintln!("report.html not opened in a browser: no chromium installed (apt-get install chromium)");
        return;
    };
    // A copy beside the report (so that its relative links hold) that records, once the
    // page has loaded, how many images it has and which did not load.
    let probe = report.with_file_name("report-probe.html");
    let script = "<script>window.addEventListener('load', () => { const imgs = [...document.images]; \
        document.body.dataset.images = imgs.length; document.body.dataset.broken = imgs.filter(i => \
        !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')).join(' '); });</script>";
    let html = std::fs::read_to_string(report).unwrap().replace("</body>", &format!("{script}</body>"));
    std::fs::write(&probe, html).unwrap();
    let profile = report.with_file_name("chromium-profile");
    let output = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let figures = vae_data::run::FIGURES.len();
    assert!(dom.contains(&format!("data-images=\"{figures}\"")), "Chromium saw the page's {figures} images:\n{dom}");
    assert!(dom.contains("data-broken=\"\""), "an image did not load:\n{dom}");
    std::fs::remove_file(probe).unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// Width and height from a PNG's IHDR chunk.
fn image_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", path.display());
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (be(16), be(20))
}

/// Checks that every file under `dir` is complete and valid for its kind; leftovers of
/// writes that a kill interrupted (`.NAME.PID.tmp`) are allowed, never taken for outputs.
fn assert_every_file_complete(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_every_file_complete(&path);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let ext = path.extension().map(|e| e.to_string_lossy().to_string()).unwrap_or_default();
        match ext.as_str() {
            "tmp" if name.starts_with('.') => {}
            "npy" => drop(read_npy(&path).unwrap_or_else(|e| panic!("{e}"))),
            "json" => {
                drop(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
            }
            "safetensors" => drop(vae_model::read_tensors(&path, &candle_core::Device::Cpu).unwrap()),
            // A PNG is complete when it ends with the IEND chunk.
            "png" => assert!(bytes.ends_with(b"IEND\xaeB`\x82"), "{} is cut short", path.display()),
            "html" => assert!(bytes.ends_with(b"</html>\n"), "{} is cut short", path.display()),
            "md" | "cmd" | "lock" | "" => assert!(std::str::from_utf8(&bytes).is_ok(), "{}", path.display()),
            "seconds" => assert!(std::str::from_utf8(&bytes).is_ok_and(|s| s.trim().parse::<f64>().is_ok()), "{name}"),
            _ => panic!("unexpected file {}", path.display()),
        }
    }
}

/// Temporary files (`.NAME.PID.tmp`) anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for path in std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()) {
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if path.extension().is_some_and(|e| e == "tmp") {
            found.push(path);
        }
    }
    found
}

/// Stage processes still alive (not zombies) whose command line mentions `dir`.
fn live_processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let proc = entry.path();
        let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
        let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
        if cmdline.contains(&needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

/// `kill -9` of the pipeline at several moments (spread over the stages, jittered by the
/// process id, printed on failure): the running stage dies with it, every file left is
/// complete, and a rerun finishes. Then a stage run by hand whose writes fail part-way
/// (a file-size limit, as on a full disk) exits with a clear error, leaves every file
/// valid and the one it failed on untouched, and the pipeline notices and redoes it.
#[test]
fn killed_pipeline_leaves_only_complete_files_and_a_rerun_finishes() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let out_tmp = tempfile::tempdir().unwrap();
    let out = out_tmp.path().to_path_buf();
    let pipeline = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(["pipeline", "--quick", "--out", out.to_str().unwrap()]);
        command
    };
    let jitter = u64::from(std::process::id() % 1000);
    let delays: Vec<u64> = [2_000, 9_000, 20_000, 35_000, 50_000].iter().map(|d| d + jitter * 3).collect();
    for &delay in &delays {
        let mut child = pipeline().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(delay) && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().unwrap();
        let mut alive = live_processes_using(&out);
        for _ in 0..50 {
            if alive.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            alive = live_processes_using(&out);
        }
        assert!(alive.is_empty(), "killed after {delay} ms (delays {delays:?}), still running: {alive:?}");
        assert_every_file_complete(&out);
    }
    let output = pipeline().output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "rerun after kills at {delays:?} ms failed:\n{log}");
    assert_every_file_complete(&out);
    assert_eq!(
        temporaries(&out),
        Vec::<PathBuf>::new(),
        "the rerun cleared the killed writes (kills at {delays:?} ms)"
    );

    // The classifier by hand, with writes limited to 4 KiB: confusion.npy (928 bytes)
    // fits, test_predictions.npy (8 KiB) does not.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("release");
    let before = std::fs::read(out.join("test_predictions.npy")).unwrap();
    let f = |name: &str| out.join(name).to_string_lossy().to_string();
    let mut classifier = Command::new(bin.join("classifier"));
    classifier.args(["--train", &f("train_latents.npy"), "--train-labels", &f("train_labels.npy")]);
    classifier.args(["--test", &f("test_latents.npy"), "--test-labels", &f("test_labels.npy")]);
    classifier.args(["--out", &f(""), "--c", "0.5"]);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        classifier.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            // Without this the kernel kills the process (SIGXFSZ) instead of failing the write.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let failed = classifier.output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "the write over the limit must fail:\n{stderr}");
    assert!(stderr.contains("test_predictions.npy") && !stderr.contains("panicked"), "clear error:\n{stderr}");
    assert_eq!(std::fs::read(out.join("test_predictions.npy")).unwrap(), before, "failed write left the old file");
    assert_every_file_complete(&out);
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "the failed write removed its temporary file");
    let output = pipeline().output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success() && log.contains("== classifier: /"), "classifier redone:\n{log}");
}

/// `cargo xtask study --quick --jobs 2` trains and analyses the four configurations, two
/// at a time with one thread each and their output in log files, and tables every one of
/// them with real figures.
#[test]
fn the_quick_study_tables_every_configuration() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("study.md");
    let runs = tmp.path().to_str().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["study", "--quick", "--jobs", "2", "--runs", runs, "--out", page.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let page = std::fs::read_to_string(page).unwrap();
    for label in
        ["| VAE (the reference's objective) |", "| β-VAE, β = 4 |", "| IWAE, K = 5 |", "| VAE, continuous Bernoulli |"]
    {
        let row = page.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label} missing:\n{page}"));
        assert!(!row.contains('–') && row.matches(" of ").count() == 1, "{row}");
    }
    assert!(page.contains("--iw-samples 5") && page.contains("--likelihood continuous-bernoulli"), "{page}");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(page.contains(&format!("--threads {}", (cores / 2).max(1))), "{page}");
    for name in ["study-quick-vae", "study-quick-beta4", "study-quick-iwae5", "study-quick-cb"] {
        let log = std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap();
        assert!(log.contains("== viz:"), "{name}'s pipeline output went to its log:\n{log}");
        let copied = format!("study-quick-figures/{name}-kl_per_dimension.png");
        assert!(page.contains(&format!("]({copied})")), "{copied} not shown:\n{page}");
        let png = std::fs::read(tmp.path().join(&copied)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{copied} is not a PNG");
    }
}
