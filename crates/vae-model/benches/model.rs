//! `cargo bench -p vae-model --bench model` (part of `cargo xtask bench`): where the CPU
//! step spends its time, layer by layer, and the encoder on the CPU kernels against
//! candle's graph, and `vae-train`'s test-set evaluation (both conventions) the same two
//! ways. `--quick` for fewer repetitions, `--only ops|encoder|evaluation` for one section,
//! `--weights MODEL.safetensors` to time a trained model (a `vae-train` output) instead of
//! a freshly initialised one: the share of features a ReLU leaves dead, which the products
//! skip, grows with training.

use std::hint::black_box;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng, rngs::StdRng};
use vae_data::timing::measure;
use vae_model::{CpuStep, Precision, Vae, load_or_init_vae, posterior_kl, sampled_codes};

/// The reference's model, initialised (seed 0) or with the weights of `weights`.
fn model(weights: Option<&str>) -> (VarMap, Vae) {
    let (vae, varmap) = load_or_init_vae(weights.map(std::path::Path::new), 0, &Device::Cpu)
        .unwrap_or_else(|e| panic!("--weights {weights:?}: {e}"));
    (varmap, vae)
}

/// The first `n` MNIST training images of the project's copy, flattened, in [0, 1]: the
/// products skip the features a ReLU leaves dead in a batch, which random pixels hardly
/// leave, so the kernels are timed on the images they train on.
fn mnist(n: usize) -> Vec<f32> {
    vae_data::testing::project_mnist_images(vae_data::SplitKind::Train, n)
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>()).collect()
}

/// The precisions this CPU runs: f32, and bf16 where it has AVX-512 BF16.
fn precisions() -> Vec<(Precision, &'static str)> {
    let mut all = vec![(Precision::F32, "")];
    if vae_model::machine::has_avx512_bf16() {
        all.push((Precision::Bf16, " (bf16)"));
    }
    all
}

/// Where a [`CpuStep`] forward and backward pass spends its time at `batch`, layer by
/// layer (medians over the repetitions).
fn per_layer(batch: usize, reps: usize, (precision, label): (Precision, &str), weights: Option<&str>) {
    let (varmap, vae) = model(weights);
    let mut step = CpuStep::new(vae.config(), &varmap).unwrap();
    step.set_precision(precision).unwrap();
    let (pixels, noise) = (mnist(batch), uniform(batch * 10, 2));
    let mut runs: Vec<Vec<(&str, f64, f64)>> = Vec::new();
    let whole = measure(reps, || {
        step.run(&pixels, &noise).unwrap();
        runs.push(step.layer_seconds().collect());
    });
    println!("per layer at batch {batch}{label} (forward | backward, ReLU and bias included); whole pass {whole}:");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, (name, _, _)) in runs[0].iter().enumerate() {
        let fwd = median(runs[1..].iter().map(|r| r[i].1).collect());
        let bwd = median(runs[1..].iter().map(|r| r[i].2).collect());
        println!("  {name:14} {:7.1} ms | {:7.1} ms", fwd * 1e3, bwd * 1e3);
    }
}

/// The encoder on 500 images: the CPU kernels that `latent-features` uses, and candle's
/// graph for reference.
fn encoder(reps: usize, weights: Option<&str>) {
    let (varmap, vae) = model(weights);
    let pixels = mnist(500);
    let x = Tensor::from_slice(&pixels, (500, 1, 28, 28), &Device::Cpu).unwrap();
    let mut step = CpuStep::new(vae.config(), &varmap).unwrap();
    for (precision, label) in precisions() {
        step.set_precision(precision).unwrap();
        let s = measure(reps, || {
            black_box(step.encode(&pixels).unwrap());
        });
        println!("encoder, 500 images{label}: {s}  {:7.0} images/s", 500.0 / s.median);
        let layers: Vec<String> = step
            .layer_seconds()
            .filter(|(_, forward, _)| *forward > 0.0)
            .map(|(name, forward, _)| format!("{name} {:.1}", forward * 1e3))
            .collect();
        println!("  last pass, ms per layer: {}", layers.join(", "));
    }
    let candle = measure(reps, || {
        black_box(vae.encode(&x).unwrap());
    });
    println!("encoder, 500 images (candle graph): {candle}  {:7.0} images/s", 500.0 / candle.median);
}

/// The per-epoch test evaluation of `vae-train` on 500 images, z sampled and z = mu: the
/// CPU kernels (the encoder, then the decoder on the sampled codes and on the means, as
/// `vae-train` does) and candle's graph.
fn evaluation(reps: usize, weights: Option<&str>) {
    let (varmap, vae) = model(weights);
    let (pixels, noise) = (mnist(500), uniform(500 * 10, 5));
    let x = Tensor::from_slice(&pixels, (500, 1, 28, 28), &Device::Cpu).unwrap();
    let eps = Tensor::from_slice(&noise, (500, 10), &Device::Cpu).unwrap();
    let mut step = CpuStep::new(vae.config(), &varmap).unwrap();
    let cpu = measure(reps, || {
        let (mu, logvar) = step.encode(&pixels).unwrap();
        black_box(posterior_kl(&mu, &logvar));
        black_box(step.log_likelihoods(&pixels, &sampled_codes(&mu, &logvar, &noise)).unwrap());
        black_box(step.log_likelihoods(&pixels, &mu).unwrap());
    });
    let candle = measure(reps, || {
        black_box(vae.loss_terms_both(&x, &eps).unwrap());
    });
    for (name, s) in [("", cpu), (" (candle graph)", candle)] {
        println!("test evaluation, 500 images, both conventions{name}: {s}  {:7.0} images/s", 500.0 / s.median);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = if args.iter().any(|a| a == "--quick") { 3 } else { 7 };
    let only: Vec<&str> = args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1].as_str()).collect();
    let run = |section: &str| only.is_empty() || only.contains(&section);
    let weights = args.windows(2).find(|w| w[0] == "--weights").map(|w| w[1].as_str());
    if run("ops") {
        for precision in precisions() {
            for batch in [128, 32] {
                per_layer(batch, reps, precision, weights);
            }
        }
    }
    if run("encoder") {
        encoder(reps, weights);
    }
    if run("evaluation") {
        evaluation(reps, weights);
    }
}
