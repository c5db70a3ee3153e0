//! Diagnostics of a trained encoder over a dataset, as VAE papers report them: the KL
//! divergence per latent dimension and the active units of Burda et al. (2015), the
//! dimensions whose posterior mean varies across the data (`Cov_x(E_q[z_d]) > 0.01`).

/// The threshold on `Var_x(mu_d)` above which dimension `d` counts as active.
pub const ACTIVE_UNIT_THRESHOLD: f64 = 0.01;

/// Running per-dimension sums over the images seen.
#[derive(Debug, Clone, Default)]
pub struct PosteriorStats {
    images: usize,
    kl: Vec<f64>,
    mu_sum: Vec<f64>,
    mu_squares: Vec<f64>,
}

impl PosteriorStats {
    /// Adds the posteriors of a batch: `mu` and `logvar` row-major `(B, dim)`.
    pub fn add(&mut self, mu: &[f32], logvar: &[f32], dim: usize) {
        if self.kl.is_empty() {
            *self = Self { images: 0, kl: vec![0.0; dim], mu_sum: vec![0.0; dim], mu_squares: vec![0.0; dim] };
        }
        for (mu, logvar) in mu.chunks_exact(dim).zip(logvar.chunks_exact(dim)) {
            for d in 0..dim {
                let (m, lv) = (f64::from(mu[d]), f64::from(logvar[d]));
                self.kl[d] += 0.5 * (lv.exp() + m * m - 1.0 - lv);
                self.mu_sum[d] += m;
                self.mu_squares[d] += m * m;
            }
            self.images += 1;
        }
    }

    /// The mean KL divergence of each dimension's posterior from N(0, 1), nats per image
    /// (they add up to the KL term of the loss).
    pub fn kl_per_dimension(&self) -> Vec<f64> {
        self.kl.iter().map(|k| k / self.images.max(1) as f64).collect()
    }

    /// The variance across the images of each dimension's posterior mean.
    pub fn mean_variance(&self) -> Vec<f64> {
        let n = self.images.max(1) as f64;
        self.mu_sum.iter().zip(&self.mu_squares).map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0)).collect()
    }

    /// Dimensions whose posterior mean varies by more than [`ACTIVE_UNIT_THRESHOLD`].
    pub fn active_units(&self) -> usize {
        self.mean_variance().iter().filter(|&&v| v > ACTIVE_UNIT_THRESHOLD).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three dimensions: one whose mean varies (active), one constant at a non-zero value
    /// (inactive, with KL from its offset), one at the prior (inactive, no KL).
    #[test]
    fn active_units_and_kl_on_a_constructed_posterior() {
        let mut stats = PosteriorStats::default();
        let (mut mu, mut logvar) = (Vec::new(), Vec::new());
        for i in 0..100 {
            mu.extend([(i % 10) as f32 * 0.1, 2.0, 0.0]);
            logvar.extend([0.0f32, 0.0, 0.0]);
        }
        stats.add(&mu[..150], &logvar[..150], 3);
        stats.add(&mu[150..], &logvar[150..], 3);
        let variance = stats.mean_variance();
        assert!((variance[0] - 0.0825).abs() < 1e-6, "variance of 0.0, 0.1, …, 0.9: {variance:?}");
        assert!(variance[1] < 1e-12 && variance[2] == 0.0);
        assert_eq!(stats.active_units(), 1);
        let kl = stats.kl_per_dimension();
        assert!((kl[0] - 0.5 * 0.285).abs() < 1e-6, "½ E[mu²]: {kl:?}");
        assert!((kl[1] - 2.0).abs() < 1e-12 && kl[2] == 0.0, "{kl:?}");
    }
}
