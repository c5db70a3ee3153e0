//! Barnes-Hut t-SNE of latent features (the `bhtsne` crate, rayon-parallel) and the
//! k-nearest-neighbour label agreement that measures how clean the clusters are.

use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

/// Settings of the embedding.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TsneParams {
    /// Effective number of neighbours (30, as scikit-learn's default).
    pub perplexity: f32,
    /// Gradient-descent iterations.
    pub epochs: usize,
    /// Barnes-Hut accuracy (0.5 is the usual trade-off).
    pub theta: f32,
    /// Seed of the initial embedding.
    pub seed: u64,
}

/// Embeds `n = points.len() / dim` points in 2-D; returns `n × 2` coordinates.
///
/// The initial embedding is drawn from N(0, 10⁻⁴) with the seeded generator, so the
/// start is reproducible; the parallel gradient sums may still differ in the last bits
/// between runs.
pub fn embed(points: &[f32], dim: usize, params: TsneParams) -> anyhow::Result<Vec<f32>> {
    let rows: Vec<&[f32]> = points.chunks_exact(dim).collect();
    let n = rows.len();
    anyhow::ensure!(
        n as f32 > 3.0 * params.perplexity + 1.0,
        "t-SNE with perplexity {} needs more than {} points, got {n}",
        params.perplexity,
        (3.0 * params.perplexity + 1.0) as usize
    );
    let normal = Normal::new(0.0f32, 1e-4).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let init: Vec<f32> = (0..n * 2).map(|_| normal.sample(&mut rng)).collect();
    let mut tsne: bhtsne::tSNE<f32, &[f32]> = bhtsne::tSNE::new(&rows);
    tsne.perplexity(params.perplexity)
        .epochs(params.epochs)
        .initial_embedding(init)
        .barnes_hut(params.theta, |a, b| a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt());
    Ok(tsne.embedding())
}

/// Fraction of the `k` nearest neighbours (Euclidean, brute force) of each point that
/// share its label, averaged over the points.
pub fn knn_agreement(points: &[f32], dim: usize, labels: &[usize], k: usize) -> f64 {
    let n = labels.len();
    if n <= k {
        return 0.0;
    }
    let row = |i: usize| &points[i * dim..(i + 1) * dim];
    let agreeing: usize = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut dist: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (row(i).iter().zip(row(j)).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(), j))
                .collect();
            dist.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            dist[..k].iter().filter(|(_, j)| labels[*j] == labels[i]).count()
        })
        .sum();
    agreeing as f64 / (n * k) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_separated_blobs_stay_apart() {
        // 3 Gaussian blobs in 10-D, centres 20 apart, unit spread.
        let mut rng = StdRng::seed_from_u64(1);
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let (mut points, mut labels) = (Vec::new(), Vec::new());
        for i in 0..300 {
            let blob = i % 3;
            points.extend((0..10).map(|d| normal.sample(&mut rng) + if d == blob { 20.0 } else { 0.0 }));
            labels.push(blob);
        }
        let params = TsneParams { perplexity: 30.0, epochs: 500, theta: 0.5, seed: 0 };
        let embedding = embed(&points, 10, params).unwrap();
        assert_eq!(embedding.len(), 600);
        assert!(embedding.iter().all(|v| v.is_finite()));
        let agreement = knn_agreement(&embedding, 2, &labels, 10);
        assert!(agreement >= 0.95, "10-NN label agreement in the embedding: {agreement}");
        assert!(embed(&points[..200], 10, params).is_err(), "too few points for perplexity 30");
    }
}
