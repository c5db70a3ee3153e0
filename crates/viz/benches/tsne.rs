//! `cargo bench -p viz --bench tsne` (part of `cargo xtask bench`): t-SNE at the reference's
//! size, 10,000 points in 20-D for 1,000 iterations. The points are the MNIST test
//! images projected on 20 fixed random directions, so they have the digits' structure.
//! `--quick` for one repetition.

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};
use vae_data::timing::measure;
use viz::tsne::{TsneParams, embed, knn_agreement};

fn main() {
    let reps = if std::env::args().any(|a| a == "--quick") { 1 } else { 3 };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let test = vae_data::load_split(&dir, vae_data::SplitKind::Test).unwrap();
    let pixels = test.gather_f32(&(0..10_000).collect::<Vec<_>>());
    let mut rng = StdRng::seed_from_u64(4);
    let directions: Vec<f32> = (0..20 * 784).map(|_| StandardNormal.sample(&mut rng)).collect();
    let points: Vec<f32> = pixels
        .chunks_exact(784)
        .flat_map(|image| {
            directions.chunks_exact(784).map(move |d| d.iter().zip(image).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect();
    let labels: Vec<usize> = (0..10_000).map(|i| usize::from(test.labels[i])).collect();
    let params = TsneParams { perplexity: 30.0, epochs: 1000, theta: 0.5, seed: 0 };
    let mut embedding = Vec::new();
    let s = measure(reps, || embedding = embed(&points, 20, params).unwrap());
    let agreement = knn_agreement(&embedding, 2, &labels, 10);
    println!("t-SNE, 10000×20, 1000 iterations: {s}  (10-NN label agreement {agreement:.3})");
}
