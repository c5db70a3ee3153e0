//! Runs `cargo xtask pipeline --quick` end to end on the real MNIST files and checks the
//! files of the README's stage table: present, with the documented shapes and dtypes.

use std::path::Path;
use std::process::Command;

use vae_data::read_npy;

fn shape_f32(path: &Path, dims: &[Option<usize>]) -> Vec<usize> {
    read_npy(path).unwrap().into_f32(path, dims).unwrap_or_else(|e| panic!("{e}")).0
}

fn shape_i64(path: &Path, dims: &[Option<usize>]) -> Vec<usize> {
    read_npy(path).unwrap().into_i64(path, dims).unwrap_or_else(|e| panic!("{e}")).0
}

#[test]
fn quick_pipeline_writes_every_documented_output_and_skips_when_up_to_date() {
    let out = std::env::temp_dir().join(format!("xtask-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
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
    assert_eq!(shape_f32(&f("history.npy"), &[Some(1), Some(7)]), vec![1, 7]);
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
    for figure in [
        "originals.png",
        "progress.png",
        "generated.png",
        "reconstructions.png",
        "loss.png",
        "tsne.png",
        "confusion.png",
        "latent_traversal.png",
        "interpolation.png",
    ] {
        assert!(report.contains(&format!("figures/{figure}")), "report.md references {figure}");
        let png = image_size(&f(&format!("figures/{figure}")));
        assert!(png.0 > 50 && png.1 > 50, "{figure} is a real image: {png:?}");
    }

    // A second run finds every stage up to date.
    let second = run(&[]);
    assert_eq!(second.matches("up to date, skipped").count(), 5, "{second}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Width and height from a PNG's IHDR chunk.
fn image_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", path.display());
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (be(16), be(20))
}
