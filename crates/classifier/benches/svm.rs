//! `cargo bench -p classifier --bench svm` (part of `cargo xtask bench`): the LinearSVC
//! fit at the reference's size, 60,000 × 20 in 10 classes. `--quick` for one repetition.

use classifier::LinearSvcParams;
use linfa::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use vae_data::timing::measure;

fn main() {
    let reps = if std::env::args().any(|a| a == "--quick") { 1 } else { 3 };
    // Ten Gaussian clusters in 20-D, a stand-in for latent features.
    let mut rng = StdRng::seed_from_u64(3);
    let centres: Vec<f64> = (0..200).map(|_| rng.random_range(-3.0..3.0)).collect();
    let labels: Vec<usize> = (0..60_000).map(|i| i % 10).collect();
    let centres = &centres;
    let x: Vec<f64> = labels.iter().flat_map(|&l| (0..20).map(move |d| centres[l * 20 + d])).collect();
    let x: Vec<f64> = x.into_iter().map(|c| c + rng.random_range(-2.0..2.0)).collect();
    let x = ndarray::Array2::from_shape_vec((60_000, 20), x).unwrap();
    let data = Dataset::new(x, ndarray::Array1::from(labels));
    let mut iterations = 0;
    let s = measure(reps, || {
        let model = LinearSvcParams::default().fit(&data).unwrap();
        iterations = model.convergence.iter().map(|c| c.iterations).max().unwrap();
    });
    println!("LinearSVC fit, 60000×20, 10 classes: {s}  ({iterations} passes at most)");
}
