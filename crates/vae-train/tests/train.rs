//! End-to-end tests of `vae_train::run` on small slices of the real MNIST data.

use std::path::{Path, PathBuf};

use clap::Parser;
use vae_train::TrainArgs;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

/// Flags the tests pin unless they set them: the reference's constant 1e-3, because they
/// resume runs to more epochs and a cosine's length is part of the run; no initial phase,
/// no average and no KL warm-up, the simplest run. `default_recipe_runs_its_phases` tests
/// the defaults.
const PINNED: [(&str, &str); 5] = [
    ("--lr", "1e-3"),
    ("--lr-schedule", "constant"),
    ("--initial-batch-epochs", "0"),
    ("--ema", "0"),
    ("--kl-warmup-epochs", "0"),
];

fn args(out: &Path, extra: &[&str]) -> TrainArgs {
    // `--iw-samples` refuses a KL warm-up: it has no KL weight.
    let refused = |flag: &str| flag == "--kl-warmup-epochs" && extra.contains(&"--iw-samples");
    let pinned = PINNED
        .iter()
        .filter(|(flag, _)| !extra.contains(flag) && !refused(flag))
        .flat_map(|(flag, value)| [*flag, *value]);
    parse_args(out, &pinned.chain(extra.iter().copied()).collect::<Vec<_>>())
}

/// The tests' slice and seed, with vae-train's defaults for every other flag but `extra`.
fn parse_args(out: &Path, extra: &[&str]) -> TrainArgs {
    let data = data_dir();
    let mut argv = vec!["vae-train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    argv.extend_from_slice(&["--train-limit", "512", "--test-limit", "200", "--batch-size", "64", "--seed", "7"]);
    argv.extend_from_slice(extra);
    TrainArgs::try_parse_from(argv).unwrap()
}

/// A temporary directory for one test's runs, removed when it is dropped (also when the
/// test fails).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn training_writes_every_output_lowers_the_loss_and_resumes_to_identical_bytes() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    // Uninterrupted: 3 epochs.
    let full = root.path().join("full");
    let history = vae_train::run(&args(&full, &["--epochs", "3"])).unwrap();
    assert_eq!(history.len(), 3);
    let uniform = 784.0 * std::f64::consts::LN_2; // BCE of predicting 0.5 everywhere
    assert!(history[0].test_loss < uniform, "{:?}", history[0]);
    assert!(history[2].train_loss < history[0].train_loss, "{history:?}");
    assert!(history[2].test_loss < history[0].test_loss, "{history:?}");
    for h in &history {
        assert_eq!(h.test_kl_at_mean, h.test_kl, "the KL does not depend on z");
        assert!(h.test_loss_at_mean < uniform && h.test_bce_at_mean != h.test_bce, "{h:?}");
    }
    for name in [
        "model.safetensors",
        "history.npy",
        "history.json",
        "samples.safetensors",
        "checkpoint.safetensors",
        "config.json",
    ] {
        assert!(full.join(name).is_file(), "{name} missing");
    }
    let h = vae_data::read_npy(&full.join("history.npy")).unwrap();
    let (shape, rows) = h.into_f32(&full.join("history.npy"), &[Some(3), Some(10)]).unwrap();
    assert_eq!(shape, vec![3, 10]);
    assert_eq!(rows[10], 1.0, "second row starts with epoch 1");
    assert!((f64::from(rows[1]) - history[0].train_loss).abs() < 1e-3);
    let config: serde_json::Value = serde_json::from_slice(&read(&full, "config.json")).unwrap();
    assert_eq!(config["args"]["seed"], 7);
    assert_eq!(config["inputs_sha256"].as_object().unwrap().len(), 4);
    let (samples, _) = vae_model::read_tensors(&full.join("samples.safetensors"), &candle_core::Device::Cpu).unwrap();
    for e in 0..=3 {
        assert_eq!(samples[&format!("generated.epoch_{e}")].dims(), &[64, 1, 28, 28]);
        assert_eq!(samples[&format!("reconstructed.epoch_{e}")].dims(), &[16, 1, 28, 28]);
    }

    // Interrupted after epoch 1, then resumed to 3: the same bytes.
    let resumed = root.path().join("resumed");
    vae_train::run(&args(&resumed, &["--epochs", "1"])).unwrap();
    let again = vae_train::run(&args(&resumed, &["--epochs", "3", "--resume"])).unwrap();
    assert_eq!(again.len(), 3);
    for name in ["model.safetensors", "history.npy", "samples.safetensors"] {
        assert!(read(&full, name) == read(&resumed, name), "{name} differs after resume");
    }

    // A resume with other flags is refused, naming the problem; outputs stay intact.
    let before = read(&resumed, "model.safetensors");
    let config_before = read(&resumed, "config.json");
    let err = vae_train::run(&args(&resumed, &["--epochs", "4", "--resume", "--lr", "0.01"])).unwrap_err();
    assert!(format!("{err:#}").contains("different run"), "{err:#}");
    assert!(before == read(&resumed, "model.safetensors"));
    assert!(config_before == read(&resumed, "config.json"), "a refused resume keeps config.json");

    // Damaged outputs of a finished run are rebuilt from the checkpoint, bit for bit.
    for name in ["model.safetensors", "samples.safetensors", "history.npy"] {
        let bytes = read(&resumed, name);
        std::fs::write(resumed.join(name), &bytes[..bytes.len() / 3]).unwrap();
    }
    std::fs::remove_file(resumed.join("history.json")).unwrap();
    vae_train::run(&args(&resumed, &["--epochs", "3", "--resume"])).unwrap();
    for name in ["model.safetensors", "history.npy", "samples.safetensors"] {
        assert!(read(&full, name) == read(&resumed, name), "{name} not rebuilt from the checkpoint");
    }
    let rebuilt: Vec<vae_train::EpochRecord> = serde_json::from_slice(&read(&resumed, "history.json")).unwrap();
    assert_eq!(rebuilt.len(), 3);

    // A checkpoint with a NaN weight or moment is refused by name, and says what to do.
    let device = candle_core::Device::Cpu;
    let checkpoint = resumed.join("checkpoint.safetensors");
    let (clean, meta) = vae_model::read_tensors(&checkpoint, &device).unwrap();
    for name in ["enc.conv1.bias", "adam.v.dec.linear.weight"] {
        let mut tensors = clean.clone();
        let t = &tensors[name];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[1] = f32::NAN;
        tensors.insert(name.into(), candle_core::Tensor::from_vec(values, t.dims(), &device).unwrap());
        vae_model::save_tensors(&checkpoint, &tensors, Some(meta.clone())).unwrap();
        let err = format!("{:#}", vae_train::run(&args(&resumed, &["--epochs", "4", "--resume"])).unwrap_err());
        assert!(err.contains(name) && err.contains("non-finite") && err.contains("remove it"), "{err}");
    }
    // Damaged metadata is named with its file.
    let mut bad_step = meta.clone();
    bad_step.insert("adam_step".into(), "x12".into());
    vae_model::save_tensors(&checkpoint, &clean, Some(bad_step)).unwrap();
    let err = format!("{:#}", vae_train::run(&args(&resumed, &["--epochs", "4", "--resume"])).unwrap_err());
    assert!(err.contains("checkpoint.safetensors: adam_step"), "{err}");
}

/// The hand-written CPU step trains like candle's autograd: one epoch on the same slice
/// gives losses within 0.5 % (the paths differ only in float rounding).
#[test]
fn cpu_step_trains_like_autograd() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let fast = root.path().join("fast");
    let reference = root.path().join("autograd");
    let a = vae_train::run(&args(&fast, &["--epochs", "1"])).unwrap();
    let b = vae_train::run(&args(&reference, &["--epochs", "1", "--autograd"])).unwrap();
    for (ours, theirs) in [(a[0].train_loss, b[0].train_loss), (a[0].test_loss, b[0].test_loss)] {
        assert!((ours - theirs).abs() < 0.005 * theirs, "{:?} vs {:?}", a[0], b[0]);
    }
    assert!(a[0].train_loss != b[0].train_loss, "the two runs took different paths");

    // --precision bf16: within 1 % of f32's losses where the CPU has AVX-512 BF16, and
    // recorded (a resume in f32 is refused); elsewhere refused, naming what is missing.
    let half = root.path().join("bf16");
    match vae_train::run(&args(&half, &["--epochs", "1", "--precision", "bf16"])) {
        Ok(c) => {
            for (ours, theirs) in [(c[0].train_loss, a[0].train_loss), (c[0].test_loss, a[0].test_loss)] {
                assert!((ours - theirs).abs() < 0.01 * theirs && ours != theirs, "{:?} vs {:?}", c[0], a[0]);
            }
            let config: serde_json::Value = serde_json::from_slice(&read(&half, "config.json")).unwrap();
            assert_eq!(config["args"]["precision"], "bf16");
            let kernels = config["machine"]["bf16_kernels"].as_str();
            assert_eq!(kernels, vae_model::machine::bf16_isa(), "{config}");
            let err = vae_train::run(&args(&half, &["--epochs", "2", "--resume"])).unwrap_err();
            assert!(format!("{err:#}").contains("different run"), "{err:#}");
        }
        Err(err) => {
            assert!(!vae_model::machine::has_avx512_bf16(), "{err:#}");
            assert!(format!("{err:#}").contains("AVX-512 BF16"), "{err:#}");
        }
    }
}

#[test]
fn bad_flags_and_data_are_clear_errors() {
    let root = scratch();
    for (flag, bad) in [
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--batch-size", "1025"),
        ("--lr", "-1"),
        ("--lr", "NaN"),
        ("--threads", "0"),
        ("--precision", "f16"),
    ] {
        let argv = ["vae-train", "--out", "/tmp/x", &format!("{flag}={bad}")];
        let err = TrainArgs::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains(flag), "{flag}={bad}: {err}");
    }
    let both = ["vae-train", "--out", "/tmp/x", "--precision", "bf16", "--autograd"];
    let err = TrainArgs::try_parse_from(both).unwrap_err().to_string();
    assert!(err.contains("--precision") && err.contains("--autograd"), "{err}");
    let out = root.path().join("nodata");
    let mut a = args(&out, &["--epochs", "1"]);
    a.data.dir = PathBuf::from("/nonexistent/mnist");
    let err = format!("{:#}", vae_train::run(&a).unwrap_err());
    assert!(err.contains("/nonexistent/mnist") && err.contains("training set"), "{err}");
    let mut wide = args(&out, &["--epochs", "1", "--iw-samples", "5"]);
    wide.batch_size = 512;
    let err = format!("{:#}", vae_train::run(&wide).unwrap_err());
    assert!(err.contains("decodes 2560 codes per step; at most 2048"), "{err}");
    wide.iw_samples = u32::MAX;
    let err = format!("{:#}", vae_train::run(&wide).unwrap_err());
    assert!(err.contains("decodes 2199023255040 codes per step"), "a product past u32 must not wrap: {err}");
    let file = root.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = format!("{:#}", vae_train::run(&args(&file, &["--epochs", "1"])).unwrap_err());
    assert!(err.contains("run directory"), "{err}");
}

/// Every output file that exists is complete and readable.
fn assert_outputs_valid(dir: &Path) {
    let device = candle_core::Device::Cpu;
    for name in ["model.safetensors", "samples.safetensors", "checkpoint.safetensors"] {
        let path = dir.join(name);
        if path.exists() {
            vae_model::read_tensors(&path, &device).unwrap_or_else(|e| panic!("{name} is damaged: {e}"));
        }
    }
    if dir.join("history.npy").exists() {
        vae_data::read_npy(&dir.join("history.npy")).expect("history.npy is damaged");
    }
    for name in ["history.json", "config.json"] {
        if dir.join(name).exists() {
            serde_json::from_slice::<serde_json::Value>(&read(dir, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    // A temporary file may survive a kill; it is never read and is replaced next time.
    assert!(leftovers.len() <= 1, "{leftovers:?}");
}

#[test]
fn kill_nine_at_any_moment_leaves_valid_files_and_resume_finishes_identically() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let binary = env!("CARGO_BIN_EXE_vae-train");
    let data = data_dir();
    let command = |out: &Path, resume: bool| {
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "3"]);
        cmd.args(["--train-limit", "256", "--test-limit", "100", "--batch-size", "64", "--seed", "3"]);
        if resume {
            cmd.arg("--resume");
        }
        cmd.stderr(std::process::Stdio::null());
        cmd
    };
    let reference = root.path().join("kill-reference");
    assert!(command(&reference, false).status().unwrap().success());

    let killed = root.path().join("killed");
    for delay_ms in [150u64, 700, 1300, 400, 2100, 900] {
        let mut child = command(&killed, true).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if killed.exists() {
            assert_outputs_valid(&killed);
        }
    }
    assert!(command(&killed, true).status().unwrap().success());
    assert_outputs_valid(&killed);
    for name in ["model.safetensors", "history.npy"] {
        assert!(read(&reference, name) == read(&killed, name), "{name} differs after kills and resumes");
    }
}

/// A recipe (warm-up, step decay, weight average) resumes to the same bytes; the model
/// written is the average, the checkpoint holds both; a cosine schedule's length is
/// part of the experiment.
#[test]
fn recipes_resume_to_identical_bytes_and_write_the_average() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let recipe = ["--warmup-epochs", "1", "--lr-schedule", "step", "--lr-step-epochs", "1", "--ema", "0.99"];
    let with = |extra: &[&'static str]| [&recipe[..], extra].concat();
    let full = root.path().join("recipe-full");
    let history = vae_train::run(&args(&full, &with(&["--epochs", "3"]))).unwrap();
    assert!(history[2].train_loss < history[0].train_loss, "{history:?}");
    let resumed = root.path().join("recipe-resumed");
    vae_train::run(&args(&resumed, &with(&["--epochs", "1"]))).unwrap();
    vae_train::run(&args(&resumed, &with(&["--epochs", "3", "--resume"]))).unwrap();
    for name in ["model.safetensors", "history.npy", "samples.safetensors"] {
        assert!(read(&full, name) == read(&resumed, name), "{name} differs after resume");
    }
    let device = candle_core::Device::Cpu;
    let (model, _) = vae_model::read_tensors(&full.join("model.safetensors"), &device).unwrap();
    let (checkpoint, meta) = vae_model::read_tensors(&full.join("checkpoint.safetensors"), &device).unwrap();
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (again, _) = vae_model::read_tensors(&resumed.join("checkpoint.safetensors"), &device).unwrap();
    for (name, t) in &checkpoint {
        assert!(values(t) == values(&again[name]), "checkpoint tensor {name} differs after resume");
    }
    let name = "dec.linear3.weight";
    assert_eq!(values(&model[name]), values(&checkpoint[&format!("ema.{name}")]), "the model is the average");
    assert!(values(&model[name]) != values(&checkpoint[name]), "training goes on from the raw weights");
    assert_eq!(meta["ema_updates"], (3 * 512 / 64).to_string());
    let config: serde_json::Value = serde_json::from_slice(&read(&full, "config.json")).unwrap();
    assert_eq!((config["ema_decay"].as_f64(), config["learning_rate"]["warmup_steps"].as_u64()), (Some(0.99), Some(8)));

    // Resuming another recipe, or a cosine run with another length, is refused.
    let err = vae_train::run(&args(&resumed, &["--epochs", "4", "--resume"])).unwrap_err();
    assert!(format!("{err:#}").contains("different run"), "{err:#}");
    let cosine = root.path().join("recipe-cosine");
    vae_train::run(&args(&cosine, &["--epochs", "1", "--lr-schedule", "cosine"])).unwrap();
    let err = vae_train::run(&args(&cosine, &["--epochs", "2", "--lr-schedule", "cosine", "--resume"])).unwrap_err();
    assert!(format!("{err:#}").contains("different run"), "{err:#}");
    // The reference's preset replaces the defaults, and refuses flags that would change it.
    let seed = TrainArgs::try_parse_from(["vae-train", "--out", "x", "--recipe", "reference"]).unwrap().resolved();
    assert_eq!((seed.batch_size, seed.initial_batch_epochs, seed.lr, seed.ema), (32, 0, 1e-3, 0.0));
    assert_eq!(seed.kl_warmup_epochs, 0);
    assert_eq!(seed.lr_schedule, vae_train::schedule::LrSchedule::Constant);
    let clash = TrainArgs::try_parse_from(["vae-train", "--out", "x", "--recipe", "seed", "--ema", "0.9"]);
    assert!(clash.unwrap_err().to_string().contains("--ema"));
}

/// The defaults: a first epoch at batch 32 with the rate scaled by sqrt(32 / 64), then
/// the batch asked for, on one cosine over the epochs (a batch-32 step moves it half as
/// far as a batch-64 one), through the average.
#[test]
fn default_recipe_runs_its_phases() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let dir = root.path().join("default");
    let history = vae_train::run(&parse_args(&dir, &["--epochs", "2"])).unwrap();
    assert!(history[1].train_loss < history[0].train_loss, "{history:?}");
    let config: serde_json::Value = serde_json::from_slice(&read(&dir, "config.json")).unwrap();
    let plan = &config["learning_rate"];
    let (initial, total) = (plan["initial_steps"].as_u64(), plan["total_steps"].as_u64());
    assert_eq!(
        (initial, total, plan["base"].as_f64()),
        (Some(512 / 32), Some(2 * 512 / 64), Some(vae_train::DEFAULT_LR))
    );
    assert_eq!(plan["initial_step_length"].as_f64(), Some(0.5));
    assert_eq!((plan["initial_scale"].as_f64(), config["ema_decay"].as_f64()), (Some(0.5f64.sqrt()), Some(0.999)));
    let (_, meta) = vae_model::read_tensors(&dir.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(meta["ema_updates"], (512 / 32 + 512 / 64).to_string(), "one update per step of either phase");
    assert_eq!(config["kl_weight"]["warmup_steps"].as_u64(), Some(512 / 32), "the KL ramps over the first epoch");
    // The importance-weighted objective has no KL weight to ramp.
    let iwae = TrainArgs::try_parse_from(["vae-train", "--out", "x", "--iw-samples", "5"]).unwrap().resolved();
    assert_eq!(iwae.kl_warmup_epochs, 0);
    // A step decay counts epochs of one batch size: refused with an initial phase.
    let step = parse_args(&root.path().join("step"), &["--lr-schedule", "step"]);
    let err = vae_train::run(&step).unwrap_err();
    assert!(format!("{err:#}").contains("--initial-batch-epochs"), "{err:#}");
}

/// `vae-eval --k 5000` (the IWAE paper's figure) stays within its memory bound: the
/// samples of one image are decoded in several passes, each detached from the last.
#[cfg(target_os = "linux")]
#[test]
fn a_large_k_evaluates_in_bounded_memory() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let dir = root.path().join("eval-k");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = vae_model::VaeConfig::default();
    let varmap = candle_nn::VarMap::new();
    vae_model::init_varmap(&varmap, &cfg, 0, &candle_core::Device::Cpu).unwrap();
    let model = dir.join("model.safetensors");
    vae_model::save_tensors(&model, &vae_model::varmap_tensors(&varmap).unwrap(), None).unwrap();
    let data = data_dir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vae-eval"))
        .args(["--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", dir.to_str().unwrap()])
        .args(["--k", "5000", "--test-limit", "1"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let peak_gib = usage.ru_maxrss as f64 / (1024.0 * 1024.0);
    // The largest child of this test process so far: vae-eval, or a smaller vae-train.
    assert!(peak_gib < 2.0, "peak resident memory of vae-eval --k 5000: {peak_gib:.2} GiB");
    let eval: serde_json::Value = serde_json::from_slice(&read(&dir, "eval.json")).unwrap();
    assert!(eval["iwae"].as_f64().unwrap() >= eval["elbo"].as_f64().unwrap());
}

/// A β-VAE (β = 4) ends its epoch with a smaller KL term than the VAE, through the CPU
/// step and through candle's autograd alike; a KL warm-up (weight ramping up from 0) lets
/// the KL grow larger early; the continuous Bernoulli likelihood is recorded and trains;
/// the importance-weighted objective (K = 5) agrees between the CPU step and autograd.
/// (Eight steps are too few for the reconstruction's side of the trade to show reliably.)
#[test]
fn beta_likelihood_and_importance_weights_change_the_objective_on_both_paths() {
    if vae_data::testing::skip_slow_tests() {
        return;
    }
    let root = scratch();
    let dirs = ["beta1", "beta4", "beta4-autograd", "beta-warmup", "cb", "iwae5", "iwae5-autograd"]
        .map(|name| root.path().join(name));
    let runs = [
        &["--epochs", "1"][..],
        &["--epochs", "1", "--beta", "4"],
        &["--epochs", "1", "--beta", "4", "--autograd"],
        &["--epochs", "1", "--kl-warmup-epochs", "1"],
        &["--epochs", "1", "--likelihood", "continuous-bernoulli"],
        &["--epochs", "1", "--iw-samples", "5"],
        &["--epochs", "1", "--iw-samples", "5", "--autograd"],
    ];
    let h: Vec<_> =
        dirs.iter().zip(runs).map(|(d, extra)| vae_train::run(&args(d, extra)).unwrap()[0].clone()).collect();
    assert!(h[1].train_kl < 0.8 * h[0].train_kl, "β = 4 lowers the KL: {:?} vs {:?}", h[1], h[0]);
    assert!((h[1].train_loss - h[2].train_loss).abs() < 0.005 * h[2].train_loss, "{:?} vs {:?}", h[1], h[2]);
    assert!(h[3].train_kl > h[0].train_kl, "less pressure on the KL while annealing: {:?} vs {:?}", h[3], h[0]);
    let config: serde_json::Value = serde_json::from_slice(&read(&dirs[1], "config.json")).unwrap();
    assert_eq!(config["kl_weight"]["beta"], 4.0);
    // The continuous Bernoulli's reconstruction term is the BCE less log C ≥ ln 2 per
    // pixel: far below the Bernoulli's, and recorded with the model.
    assert!(h[4].train_bce < h[0].train_bce - 784.0 * 0.5, "{:?} vs {:?}", h[4], h[0]);
    let config: serde_json::Value = serde_json::from_slice(&read(&dirs[4], "config.json")).unwrap();
    assert_eq!(config["model"]["likelihood"], "continuous-bernoulli");
    // The importance-weighted objective trains alike on both paths, and differently from
    // the VAE's.
    assert!((h[5].train_loss - h[6].train_loss).abs() < 0.005 * h[6].train_loss, "{:?} vs {:?}", h[5], h[6]);
    assert!(h[5].train_loss != h[0].train_loss, "K = 5 is another objective");
    let config: serde_json::Value = serde_json::from_slice(&read(&dirs[5], "config.json")).unwrap();
    assert_eq!(config["args"]["iw_samples"], 5);
}
