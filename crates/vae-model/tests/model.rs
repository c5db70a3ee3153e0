//! The model's contract: PyTorch-compatible names and shapes, parameter count, and a
//! save → load round trip that reproduces outputs exactly, on real MNIST images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vae_model::{
    Vae, VaeConfig, VaeError, init_varmap, load_vae, loss_terms, parameter_specs, save_tensors, varmap_tensors,
};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vae-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn mnist_batch(n: usize) -> Tensor {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let test = vae_data::load_split(&dir, vae_data::SplitKind::Test).unwrap();
    let indices: Vec<usize> = (0..n).collect();
    Tensor::from_vec(test.gather_f32(&indices), (n, 1, 28, 28), &Device::Cpu).unwrap()
}

fn fresh(seed: u64) -> (VarMap, Vae) {
    let cfg = VaeConfig::default();
    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, seed, &Device::Cpu).unwrap();
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    (varmap, vae)
}

#[test]
fn names_shapes_and_count_match_the_pytorch_state_dict() {
    let expected: [(&str, &[usize]); 22] = [
        ("enc.conv1.weight", &[16, 1, 3, 3]),
        ("enc.conv1.bias", &[16]),
        ("enc.conv2.weight", &[32, 16, 3, 3]),
        ("enc.conv2.bias", &[32]),
        ("enc.linear.weight", &[512, 18432]),
        ("enc.linear.bias", &[512]),
        ("enc.linear2.weight", &[256, 512]),
        ("enc.linear2.bias", &[256]),
        ("enc.mu.weight", &[10, 256]),
        ("enc.mu.bias", &[10]),
        ("enc.var.weight", &[10, 256]),
        ("enc.var.bias", &[10]),
        ("dec.linear.weight", &[256, 10]),
        ("dec.linear.bias", &[256]),
        ("dec.linear2.weight", &[512, 256]),
        ("dec.linear2.bias", &[512]),
        ("dec.linear3.weight", &[18432, 512]),
        ("dec.linear3.bias", &[18432]),
        ("dec.deconv1.weight", &[32, 16, 3, 3]),
        ("dec.deconv1.bias", &[16]),
        ("dec.deconv2.weight", &[16, 1, 3, 3]),
        ("dec.deconv2.bias", &[1]),
    ];
    let specs = parameter_specs(&VaeConfig::default());
    let got: Vec<(&str, &[usize])> = specs.iter().map(|s| (s.name.as_str(), s.shape.as_slice())).collect();
    assert_eq!(got, expected);
    let (varmap, _) = fresh(0);
    let tensors = varmap_tensors(&varmap).unwrap();
    assert_eq!(tensors.len(), 22);
    for (name, shape) in expected {
        assert_eq!(tensors[name].dims(), shape, "{name}");
    }
    let count: usize = tensors.values().map(Tensor::elem_count).sum();
    assert_eq!(count, 19_173_749);
}

#[test]
fn init_is_seeded_and_within_pytorch_bounds() {
    let (a, _) = fresh(1);
    let (b, _) = fresh(1);
    let (c, _) = fresh(2);
    let [a, b, c] = [a, b, c].map(|v| varmap_tensors(&v).unwrap());
    let w = |t: &HashMap<String, Tensor>| t["enc.linear.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w(&a), w(&b), "same seed, same weights");
    assert_ne!(w(&a), w(&c), "another seed, other weights");
    // fan_in 18432 → bound 1/sqrt(18432); deconv1's fan_in is 16·9 by PyTorch's rule.
    let max = |name: &str| a[name].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max("enc.linear.weight") <= 1.0 / 18432f32.sqrt());
    assert!(max("enc.linear.weight") > 0.9 / 18432f32.sqrt());
    assert!(max("dec.deconv1.weight") <= 1.0 / 144f32.sqrt() && max("dec.deconv1.weight") > 0.9 / 144f32.sqrt());
}

#[test]
fn save_load_reproduces_outputs_and_bad_files_are_errors() {
    let (varmap, vae) = fresh(3);
    let x = mnist_batch(8);
    let eps =
        Tensor::from_vec((0..80).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), (8, 10), &Device::Cpu).unwrap();
    let out = vae.forward(&x, &eps).unwrap();
    assert_eq!(out.logits.dims(), &[8, 1, 28, 28]);
    assert_eq!(out.mu.dims(), &[8, 10]);
    let terms = loss_terms(&out, &x).unwrap();
    // An untrained decoder predicts about 0.5 everywhere: BCE ≈ 784·ln 2 per image.
    let bce = terms.bce.to_scalar::<f32>().unwrap() / 8.0;
    assert!((bce - 784.0 * std::f32::consts::LN_2).abs() < 60.0, "bce {bce}");

    let path = tmp("model.safetensors");
    let mut tensors = varmap_tensors(&varmap).unwrap();
    tensors.insert("extra.unused".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    save_tensors(&path, &tensors, None).unwrap();
    let (loaded, _, extra) = load_vae(&path, &Device::Cpu).unwrap();
    assert_eq!(extra, vec!["extra.unused".to_string()]);
    let again = loaded.forward(&x, &eps).unwrap();
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(bits(&out.logits), bits(&again.logits), "identical outputs after the round trip");
    assert_eq!(bits(&out.mu), bits(&again.mu));

    // A missing tensor, a mis-shaped one and a file that is not safetensors.
    let mut missing = varmap_tensors(&varmap).unwrap();
    missing.remove("dec.deconv2.bias");
    save_tensors(&path, &missing, None).unwrap();
    let err = load_vae(&path, &Device::Cpu).err().unwrap();
    assert!(matches!(&err, VaeError::MissingTensor { name, .. } if name == "dec.deconv2.bias"), "{err}");
    let mut bad = varmap_tensors(&varmap).unwrap();
    bad.insert("enc.conv2.weight".into(), Tensor::zeros((32, 16, 5, 5), DType::F32, &Device::Cpu).unwrap());
    save_tensors(&path, &bad, None).unwrap();
    let err = load_vae(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("enc.conv2.weight") && err.contains("[32, 16, 5, 5]"), "{err}");
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = load_vae(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
    let err = vae.encode(&Tensor::zeros((2, 1, 14, 14), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("14x14"), "{err}");
}
