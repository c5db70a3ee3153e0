//! The model's contract: PyTorch-compatible names and shapes, parameter count, and a
//! save → load round trip that reproduces outputs exactly, on real MNIST images.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use vae_model::{
    Vae, VaeConfig, VaeError, init_varmap, load_vae, loss_terms, parameter_specs, save_tensors, varmap_tensors,
};

/// A temporary file named `…name`, removed when the returned path is dropped.
fn tmp(name: &str) -> tempfile::TempPath {
    tempfile::Builder::new().suffix(name).tempfile().unwrap().into_temp_path()
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
    let mut wrong_dtype = varmap_tensors(&varmap).unwrap();
    wrong_dtype.insert("enc.conv2.weight".into(), Tensor::zeros((32, 16, 3, 3), DType::I64, &Device::Cpu).unwrap());
    save_tensors(&path, &wrong_dtype, None).unwrap();
    let err = load_vae(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("enc.conv2.weight") && err.contains("I64"), "{err}");
    // Hand-made headers: a header length beyond the file, offsets outside the data, a
    // dtype the toolkit never writes.
    let header = |json: &str, data: usize| {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    };
    let cases = [
        (b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage".to_vec(), "not a valid safetensors file"),
        (header(r#"{"enc.mu.bias":{"dtype":"F32","shape":[10],"data_offsets":[0,4000]}}"#, 40), "not a valid"),
        (header(r#"{"enc.mu.bias":{"dtype":"F64","shape":[10],"data_offsets":[0,80]}}"#, 80), "F32 or I64"),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&path, bytes).unwrap();
        let err = load_vae(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains(expected) && err.contains("model.safetensors"), "{expected}: {err}");
    }
    let err = vae.encode(&Tensor::zeros((2, 1, 14, 14), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("14x14"), "{err}");
}

/// `save_tensors` writes f32 tensors from where they lie and copies the rest: the file is
/// byte for byte `safetensors::serialize`'s, for tensors of several dtypes, views with an
/// offset or transposed, metadata, and a total past the direct-write threshold.
#[test]
fn saved_files_are_safetensors_own_bytes() {
    let dev = Device::Cpu;
    let big = Tensor::arange(0f32, (vae_data::DIRECT_WRITE_MIN / 4 + 1000) as f32, &dev).unwrap();
    let grid = Tensor::arange(0f32, 35.0, &dev).unwrap().reshape((5, 7)).unwrap();
    let tensors = HashMap::from([
        ("b.big".to_string(), big),
        ("a.narrow".to_string(), grid.narrow(0, 2, 3).unwrap()),
        ("c.transposed".to_string(), grid.t().unwrap()),
        ("d.labels".to_string(), Tensor::new(&[3i64, 1, 4], &dev).unwrap()),
        ("e.bytes".to_string(), Tensor::new(&[1u8, 5, 9], &dev).unwrap()),
        ("f.halves".to_string(), Tensor::new(&[1.5f32, -2.0], &dev).unwrap().to_dtype(DType::BF16).unwrap()),
    ]);
    let metadata = HashMap::from([("format".to_string(), "test".to_string())]);
    let path = tmp("mixed.safetensors");
    save_tensors(&path, &tensors, Some(metadata.clone())).unwrap();
    let expected = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata)).unwrap();
    assert!(std::fs::read(&path).unwrap() == expected, "the file differs from safetensors::serialize");
}

/// One NaN in a bias or an infinity in a weight is refused with the tensor's name
/// (a ReLU would turn a NaN into silent zeros downstream).
#[test]
fn non_finite_weights_are_refused_by_name() {
    let (varmap, _) = fresh(5);
    let path = tmp("poisoned.safetensors");
    for (name, value, at) in
        [("enc.conv1.bias", f32::NAN, 3), ("dec.linear.bias", f32::NAN, 0), ("enc.conv1.weight", f32::INFINITY, 7)]
    {
        let mut tensors = varmap_tensors(&varmap).unwrap();
        let t = &tensors[name];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[at] = value;
        let poisoned = Tensor::from_vec(values, t.dims(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), poisoned);
        save_tensors(&path, &tensors, None).unwrap();
        let err = load_vae(&path, &Device::Cpu).err().unwrap();
        assert!(
            matches!(&err, VaeError::NonFinite { name: n, index, .. } if n == name && *index == at),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("poisoned.safetensors"), "{err}");
    }
}

#[test]
fn importance_weighted_bound_is_at_least_the_elbo_and_matches_the_loss() {
    let (_, vae) = fresh(4);
    let x = mnist_batch(4);
    let mut rng = StdRng::seed_from_u64(7);
    let eps: Vec<f32> = (0..16 * 4 * 10).map(|_| rng.sample(StandardNormal)).collect();
    let eps = Tensor::from_vec(eps, (16, 4, 10), &Device::Cpu).unwrap();
    let bounds = vae_model::likelihood_bounds(&vae, &x, &eps).unwrap();
    let elbo = bounds.elbo.to_vec1::<f32>().unwrap();
    let iwae = bounds.iwae.to_vec1::<f32>().unwrap();
    for (e, i) in elbo.iter().zip(&iwae) {
        assert!(i >= e, "IWAE bound {i} below the ELBO {e}");
    }
    // With one sample the bound's mean is minus the loss (BCE + analytic KL) in
    // expectation; with the same single eps, log w differs from −(BCE + KL) only by the
    // Monte-Carlo KL term, so compare the reconstruction part exactly instead.
    let one = eps.narrow(0, 0, 1).unwrap();
    let single = vae_model::likelihood_bounds(&vae, &x, &one).unwrap();
    let e1 = single.elbo.to_vec1::<f32>().unwrap();
    let i1 = single.iwae.to_vec1::<f32>().unwrap();
    for (a, b) in e1.iter().zip(&i1) {
        assert!((a - b).abs() < 1e-3, "k = 1: IWAE {b} equals the ELBO {a}");
    }
    let out = vae.forward(&x, &one.squeeze(0).unwrap()).unwrap();
    let terms = loss_terms(&out, &x).unwrap();
    let loss = (terms.bce.to_scalar::<f32>().unwrap() + terms.kl.to_scalar::<f32>().unwrap()) / 4.0;
    let mean_elbo = e1.iter().sum::<f32>() / 4.0;
    assert!((mean_elbo + loss).abs() < 25.0, "single-sample ELBO {mean_elbo} near −loss {loss}");
}

#[test]
fn damaged_safetensors_files_never_panic() {
    let path = tmp("small.safetensors");
    let tensors = HashMap::from([
        ("a".to_string(), Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap()),
        ("b".to_string(), Tensor::zeros(5, DType::I64, &Device::Cpu).unwrap()),
    ]);
    save_tensors(&path, &tensors, Some(HashMap::from([("k".to_string(), "v".to_string())]))).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut next = || rng.random::<u32>() as usize;
    let mut refused = 0;
    for _ in 0..2000 {
        let mut bytes = good.clone();
        if next() % 2 == 0 {
            bytes.truncate(next() % good.len());
        } else {
            for _ in 0..1 + next() % 3 {
                let at = next() % bytes.len().min(160);
                bytes[at] = next() as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        refused += usize::from(vae_model::read_tensors(&path, &Device::Cpu).is_err());
    }
    assert!(refused > 500, "{refused} damaged files refused");
}

/// Weights in PyTorch's names and layouts, inputs and expected outputs computed by an
/// independent pure-Python implementation of PyTorch's layer definitions
/// (`tests/fixtures/make_reference.py`), for a tiny instance of the architecture.
#[test]
fn pytorch_layout_weights_give_the_reference_outputs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_reference.safetensors");
    let cfg = VaeConfig {
        latent_dim: 2,
        image_channels: 1,
        image_size: 6,
        conv_channels: [2, 3],
        hidden: [5, 4],
        ..VaeConfig::default()
    };
    let (varmap, extra) = vae_model::load_varmap(&path, &cfg, &Device::Cpu).unwrap();
    assert_eq!(extra, ["expected.logits_of_mu", "expected.logvar", "expected.mu", "input"]);
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let (tensors, _) = vae_model::read_tensors(&path, &Device::Cpu).unwrap();
    let (mu, logvar) = vae.encode(&tensors["input"]).unwrap();
    let logits = vae.decode_logits(&mu).unwrap();
    for (got, name) in [(mu, "expected.mu"), (logvar, "expected.logvar"), (logits, "expected.logits_of_mu")] {
        let expected = &tensors[name];
        assert_eq!(got.dims(), expected.dims(), "{name}");
        let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{name}: max difference {diff}");
    }
}

#[test]
fn device_names_are_parsed_and_unavailable_ones_are_clear_errors() {
    assert!(vae_model::device("cpu").unwrap().is_cpu());
    for bad in ["gpu", "cuda:x", "cuda:", ""] {
        let err = vae_model::device(bad).unwrap_err().to_string();
        assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad}: {err}");
    }
    // Without the feature (as in CI), CUDA is refused with the way to get it.
    #[cfg(not(feature = "cuda"))]
    for spec in ["cuda", "cuda:1"] {
        let err = vae_model::device(spec).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{spec}: {err}");
    }
}
