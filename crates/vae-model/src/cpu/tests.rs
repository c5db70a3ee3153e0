//! The CPU step against candle's autograd, the contract between the two paths.

use super::live::Restrict;
use super::*;
use crate::{Vae, init_varmap};
use candle_core::Device;
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

fn mnist_images(n: usize) -> Vec<f32> {
    vae_data::testing::project_mnist_images(vae_data::SplitKind::Test, n)
}

/// Every parameter's gradient left in `step` is within 1e-4 (relative to its largest
/// value) of candle's autograd in `reference`.
fn assert_gradients_match(step: &CpuStep, varmap: &VarMap, reference: &candle_core::backprop::GradStore, case: &str) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let want = reference.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = step.grad(name).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale, "{case} {name}: max difference {diff}, scale {scale}");
    }
}

/// Loss and every parameter gradient against candle's autograd on the candle model,
/// for the reference's model and for a smaller one with other widths, the latter also as a
/// β-VAE (KL weighted by 4) and under the continuous Bernoulli likelihood.
#[test]
fn matches_candle_autograd() {
    let small = VaeConfig { latent_dim: 3, conv_channels: [4, 6], hidden: [24, 12], ..VaeConfig::default() };
    let continuous = VaeConfig { likelihood: crate::Likelihood::ContinuousBernoulli, ..small.clone() };
    let cases = [(VaeConfig::default(), 5, 1.0), (small.clone(), 3, 1.0), (small, 3, 4.0), (continuous, 3, 1.0)];
    for (cfg, batch, beta) in cases {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        init_varmap(&varmap, &cfg, 11, &dev).unwrap();
        let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let pixels = mnist_images(batch);
        let mut rng = StdRng::seed_from_u64(5);
        let eps: Vec<f32> = (0..batch * cfg.latent_dim).map(|_| rng.sample(StandardNormal)).collect();

        let x = Tensor::from_vec(pixels.clone(), (batch, 1, 28, 28), &dev).unwrap();
        let e = Tensor::from_vec(eps.clone(), (batch, cfg.latent_dim), &dev).unwrap();
        let terms = vae.loss_terms(&vae.forward(&x, &e).unwrap(), &x).unwrap();
        let objective = ((&terms.bce + (&terms.kl * beta).unwrap()).unwrap() / batch as f64).unwrap();
        let reference = objective.backward().unwrap();

        let mut step = CpuStep::new(&cfg, &varmap).unwrap();
        step.set_kl_weight(beta as f32);
        step.buf.restrict = Restrict::Always;
        let loss = step.run(&pixels, &eps).unwrap();
        assert_eq!(step.buf.restricted(), [true, true]);
        let bce = f64::from(terms.bce.to_scalar::<f32>().unwrap());
        let kl = f64::from(terms.kl.to_scalar::<f32>().unwrap());
        assert!((loss.bce - bce).abs() < 1e-5 * bce, "bce {} vs {bce}", loss.bce);
        assert!((loss.kl - kl).abs() < 1e-4 * kl.max(1.0), "kl {} vs {kl}", loss.kl);
        assert_gradients_match(&step, &varmap, &reference, "");
        step.buf.restrict = Restrict::Never;
        let dense = step.run(&pixels, &eps).unwrap();
        assert!((dense.bce - loss.bce).abs() < 1e-5 * bce && (dense.kl - loss.kl).abs() < 1e-4 * kl.max(1.0));
        assert_eq!(step.buf.restricted(), [false, false]);
        assert_gradients_match(&step, &varmap, &reference, " (dense products)");
        step.buf.restrict = Restrict::WhenItPays;
        let (mu, logvar) = vae.encode(&x).unwrap();
        let (our_mu, our_logvar) = step.encode(&pixels).unwrap();
        for (want, got) in [(mu, our_mu), (logvar, our_logvar)] {
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(want.len() == got.len() && diff < 1e-4, "encoder differs by {diff}");
        }
        // The decoder alone: log p(x | z = mu) is minus candle's at-mean reconstruction term.
        assert_decoder_matches(&mut step, &vae, &x, &pixels);
        // A second, smaller batch reuses the buffers and gives the same result as a
        // fresh step.
        let again = step.run(&pixels[..784], &eps[..cfg.latent_dim]).unwrap();
        let mut fresh = CpuStep::new(&cfg, &varmap).unwrap();
        fresh.set_kl_weight(beta as f32);
        let fresh = fresh.run(&pixels[..784], &eps[..cfg.latent_dim]).unwrap();
        assert_eq!(again, fresh);
    }
}

/// More images than one encoder chunk (of both sizes) and than one decoder pass, the last
/// ones partial; a smaller model keeps candle's side quick.
#[test]
fn encode_in_chunks_matches_candle() {
    let cfg = VaeConfig { conv_channels: [4, 6], hidden: [24, 12], ..VaeConfig::default() };
    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, 2, &Device::Cpu).unwrap();
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let n = ENCODE_ROWS + ENCODE_CONV_ROWS + 3;
    let pixels = mnist_images(n);
    let x = Tensor::from_vec(pixels.clone(), (n, 1, 28, 28), &Device::Cpu).unwrap();
    let mut step = CpuStep::new(&cfg, &varmap).unwrap();
    assert_encoder_matches(&mut step, &vae, &x, &pixels);
    assert!(n > DECODE_ROWS);
    assert_decoder_matches(&mut step, &vae, &x, &pixels);
}

/// The test losses as `vae-train` computes them on the CPU ([`CpuStep::encode`],
/// [`sampled_codes`], [`CpuStep::log_likelihoods`], [`posterior_kl`]) against candle's
/// `loss_terms_both`, z sampled and z = mu, on images `x` with fixed noise in [-2, 2].
fn assert_decoder_matches(step: &mut CpuStep, vae: &Vae, x: &Tensor, pixels: &[f32]) {
    let (b, latent) = (pixels.len() / 784, vae.config().latent_dim);
    let noise: Vec<f32> = (0..b * latent).map(|i| ((i * 37 % 23) as f32 - 11.0) / 6.0).collect();
    let eps = Tensor::from_slice(&noise, (b, latent), &Device::Cpu).unwrap();
    let (sampled, at_mean) = vae.loss_terms_both(x, &eps).unwrap();
    let (mu, logvar) = step.encode(pixels).unwrap();
    let ours_sampled: f64 =
        -step.log_likelihoods(pixels, &sampled_codes(&mu, &logvar, &noise)).unwrap().iter().sum::<f64>();
    let ours_at_mean: f64 = -step.log_likelihoods(pixels, &mu).unwrap().iter().sum::<f64>();
    let scalar = |t: &Tensor| f64::from(t.to_scalar::<f32>().unwrap());
    for (ours, theirs) in [(ours_sampled, scalar(&sampled.bce)), (ours_at_mean, scalar(&at_mean.bce))] {
        // candle sums in f32 (≈ 450,000 terms for the large case), ours in f64.
        assert!((ours - theirs).abs() < 1e-4 * theirs.abs(), "reconstruction {ours} vs {theirs}");
    }
    let kl = scalar(&sampled.kl);
    assert!((posterior_kl(&mu, &logvar) - kl).abs() < 1e-4 * kl.max(1.0), "kl {} vs {kl}", posterior_kl(&mu, &logvar));
}

#[test]
fn bad_batches_and_parameters_are_errors() {
    let cfg = VaeConfig::default();
    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, 0, &Device::Cpu).unwrap();
    let mut step = CpuStep::new(&cfg, &varmap).unwrap();
    let err = |r: Result<BatchLoss>| r.unwrap_err().to_string();
    assert!(err(step.run(&[0.5; 700], &[0.0; 10])).contains("do not make a batch"));
    assert!(err(step.run(&[0.5; 784], &[0.0; 20])).contains("do not make a batch"));
    assert!(err(step.run(&[], &[])).contains("do not make a batch"));
    assert!(step.encode(&[0.5; 785]).unwrap_err().to_string().contains("do not make a batch"));
    assert!(step.grad("enc.conv1.weight").is_none(), "no gradient before the first step");
    assert!(step.log_likelihoods(&[0.5; 784], &[0.0; 9]).unwrap_err().to_string().contains("do not make a batch"));
    let mut nan = vec![0.5; 784];
    nan[3] = f32::NAN;
    assert!(err(step.run(&nan, &[0.0; 10])).contains("outside [0, 1]"));
    let other = VaeConfig { latent_dim: 4, ..cfg };
    assert!(CpuStep::new(&other, &varmap).err().unwrap().to_string().contains("shape"));
    varmap.data().lock().unwrap().remove("dec.linear.bias");
    assert!(CpuStep::new(&cfg, &varmap).err().unwrap().to_string().contains("dec.linear.bias is missing"));
}

/// The importance-weighted objective (K = 3 samples per image) and every gradient against
/// candle's autograd of `−mean(IWAE bound)` built from `log_importance_weights`, under
/// both likelihoods.
#[test]
fn importance_weighted_objective_matches_candle_autograd() {
    let (batch, k) = (2, 3);
    for likelihood in [crate::Likelihood::Bernoulli, crate::Likelihood::ContinuousBernoulli] {
        let cfg =
            VaeConfig { latent_dim: 3, conv_channels: [4, 6], hidden: [24, 12], likelihood, ..VaeConfig::default() };
        let (dev, d) = (Device::Cpu, cfg.latent_dim);
        let varmap = VarMap::new();
        init_varmap(&varmap, &cfg, 13, &dev).unwrap();
        let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let pixels = mnist_images(batch);
        let mut rng = StdRng::seed_from_u64(8);
        // Sample-major (k, B, d) for candle, image-major (B · k, d) for the CPU step.
        let eps: Vec<f32> = (0..k * batch * d).map(|_| rng.sample(StandardNormal)).collect();
        let image_major: Vec<f32> = (0..batch * k)
            .flat_map(|r| (0..d).map(move |j| (r % k * batch + r / k) * d + j))
            .map(|at| eps[at])
            .collect();
        let x = Tensor::from_vec(pixels.clone(), (batch, 1, 28, 28), &dev).unwrap();
        let (mu, logvar) = vae.encode(&x).unwrap();
        let e = Tensor::from_vec(eps, (k, batch, d), &dev).unwrap();
        let log_w = crate::log_importance_weights(&vae, &mu, &logvar, &x, &e).unwrap();
        let objective = crate::bounds_from_log_weights(&log_w).unwrap().iwae.mean_all().unwrap().neg().unwrap();
        let reference = objective.backward().unwrap();
        let mut step = CpuStep::new(&cfg, &varmap).unwrap();
        let loss = step.run_importance_weighted(&pixels, &image_major, k).unwrap();
        let first = Tensor::from_vec(image_major[..batch * d].to_vec(), (batch, d), &dev).unwrap();
        let kl = vae.loss_terms(&vae.forward(&x, &first).unwrap(), &x).unwrap().kl.to_scalar::<f32>().unwrap();
        assert!((loss.kl - f64::from(kl)).abs() < 1e-4 * f64::from(kl).max(1.0), "{loss:?} vs KL {kl}");
        assert_gradients_match(&step, &varmap, &reference, &format!("{likelihood:?}"));
        // The same step object still runs the VAE objective afterwards, as a fresh one does.
        let again = step.run(&pixels, &image_major[..batch * d]).unwrap();
        let fresh = CpuStep::new(&cfg, &varmap).unwrap().run(&pixels, &image_major[..batch * d]).unwrap();
        assert_eq!(again, fresh);
    }
}

/// [`Precision::Bf16`] on the reference's model: the loss, every gradient and the
/// encoder stay near f32's (bf16 keeps 8 bits of mantissa), and differ from them (the
/// products do run in bf16); on a CPU without AVX-512 BF16 it is refused, naming it.
#[test]
fn bf16_precision_stays_near_f32() {
    let cfg = VaeConfig::default();
    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, 3, &Device::Cpu).unwrap();
    let mut step = CpuStep::new(&cfg, &varmap).unwrap();
    assert_eq!(step.precision(), Precision::F32);
    // The names the flags and records use, as serde spells them.
    for p in [Precision::F32, Precision::Bf16] {
        assert_eq!(serde_json::to_value(p).unwrap(), p.name());
    }
    if !crate::machine::has_avx512_bf16() {
        let err = step.set_precision(Precision::Bf16).unwrap_err().to_string();
        assert!(err.contains("AVX-512 BF16") && err.contains(&crate::machine::cpu_model()), "{err}");
        assert_eq!(step.precision(), Precision::F32);
        return;
    }
    let batch = 8;
    let pixels = mnist_images(batch);
    let mut rng = StdRng::seed_from_u64(4);
    let eps: Vec<f32> = (0..batch * cfg.latent_dim).map(|_| rng.sample(StandardNormal)).collect();
    let f32_loss = step.run(&pixels, &eps).unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let f32_grads: Vec<Vec<f32>> = names.iter().map(|n| step.grad(n).unwrap().to_vec()).collect();
    let f32_codes = step.encode(&pixels).unwrap();
    step.set_precision(Precision::Bf16).unwrap();
    assert_eq!(step.precision(), Precision::Bf16);
    let loss = step.run(&pixels, &eps).unwrap();
    assert!((loss.bce - f32_loss.bce).abs() < 2e-3 * f32_loss.bce, "{loss:?} vs {f32_loss:?}");
    assert!(loss != f32_loss, "the bf16 step gave f32's loss to the bit");
    // Relative to the gradient's norm: a ReLU whose input is near zero may switch
    // between the two, moving single values of a weight gradient by far more. At this
    // random initialisation the encoder's gradients, behind three bf16 products, are
    // 2-7 % away (a product on misread operands is 100 % away); the decoder's last
    // layers, behind one, 0.01-0.2 %.
    let mut worst = 0f64;
    for (name, want) in names.iter().zip(&f32_grads) {
        let got = step.grad(name).unwrap();
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let error = norm(&mut want.iter().zip(got).map(|(a, b)| a - b)) / norm(&mut want.iter().copied()).max(1e-12);
        assert!(error < 0.15, "{name}: the bf16 gradient is {error} of the f32 one's norm away");
        worst = worst.max(error);
    }
    assert!(worst > 0.0, "every bf16 gradient equals f32's to the bit");
    let codes = step.encode(&pixels).unwrap();
    for (want, got) in [(&f32_codes.0, &codes.0), (&f32_codes.1, &codes.1)] {
        let diff = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 0.02, "bf16 encoder differs by {diff}");
    }
    step.set_precision(Precision::F32).unwrap();
    assert_eq!(step.run(&pixels, &eps).unwrap(), f32_loss, "back to f32, the same bits");
}

/// The reference's model on more images than a training batch: the encoder's wide
/// product is then shared out by columns between the cores, and the decoder's widening
/// product on its 200 rows is the plain one, not the column-major one (`linear_forward`);
/// both still match candle. Then, the second convolution's bias
/// lowered until few of its outputs are non-zero, the encoder's wide layer on them alone
/// (`SparseInput`) matches candle too, and [`Precision::Bf16`] takes that f32 path as well.
#[test]
fn encode_of_a_large_chunk_matches_candle() {
    let cfg = VaeConfig::default();
    let varmap = VarMap::new();
    init_varmap(&varmap, &cfg, 6, &Device::Cpu).unwrap();
    let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let n = 200;
    let pixels = mnist_images(n);
    let x = Tensor::from_vec(pixels.clone(), (n, 1, 28, 28), &Device::Cpu).unwrap();
    let mut step = CpuStep::new(&cfg, &varmap).unwrap();
    assert_encoder_matches(&mut step, &vae, &x, &pixels);
    assert!(!step.sparse.has_run(), "most outputs of the initial model's convolution are non-zero");
    assert_decoder_matches(&mut step, &vae, &x, &pixels);

    let bias = varmap.data().lock().unwrap()["enc.conv2.bias"].clone();
    bias.set(&(bias.as_tensor() - 0.1).unwrap()).unwrap();
    assert_encoder_matches(&mut step, &vae, &x, &pixels);
    assert!(step.sparse.has_run(), "the lowered bias leaves few outputs non-zero");
    if crate::machine::has_avx512_bf16() {
        let f32_codes = step.encode(&pixels).unwrap();
        step.set_precision(Precision::Bf16).unwrap();
        assert_eq!(step.encode(&pixels).unwrap(), f32_codes, "under bf16 the sparse product is f32's too");
    }
}

/// [`CpuStep::encode`] of `pixels` (the images `x`) gives candle's posterior.
fn assert_encoder_matches(step: &mut CpuStep, vae: &Vae, x: &Tensor, pixels: &[f32]) {
    let (mu, logvar) = vae.encode(x).unwrap();
    let (our_mu, our_logvar) = step.encode(pixels).unwrap();
    for (want, got) in [(mu, our_mu), (logvar, our_logvar)] {
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(want.len() == got.len() && diff < 1e-4, "encoder differs by {diff}");
    }
}
