//! An RBF-kernel SVM (linfa-svm's SMO solver), one-vs-rest, for comparing the latent
//! space with a non-linear classifier.
//!
//! linfa-svm keeps a dense n×n kernel matrix per class, so it is fitted on a bounded
//! subsample and refuses a sample whose kernel would exceed a memory limit.

use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::ClassifierError;

/// Settings of the RBF model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RbfParams {
    /// Penalty of margin violations.
    pub c: f64,
    /// Kernel width `w` in `exp(−‖x − x'‖² / w)`; `None` takes features × variance of the
    /// data (scikit-learn's `gamma = "scale"`).
    pub width: Option<f64>,
    /// Largest kernel matrix allowed, in bytes (n² · 8).
    pub max_kernel_bytes: u64,
}

impl Default for RbfParams {
    fn default() -> Self {
        Self { c: 1.0, width: None, max_kernel_bytes: 2 << 30 }
    }
}

/// A fitted one-vs-rest RBF SVM.
pub struct RbfSvm {
    models: Vec<Svm<f64, bool>>,
    /// The kernel width used.
    pub width: f64,
}

impl RbfSvm {
    /// Fits one binary SVM per class on all rows of `x`.
    pub fn fit(x: ArrayView2<f64>, y: &Array1<usize>, params: RbfParams) -> Result<Self, ClassifierError> {
        let n = x.nrows() as u64;
        if n * n * 8 > params.max_kernel_bytes {
            return Err(ClassifierError::Params(format!(
                "an RBF kernel over {n} samples needs {} MiB, over the limit of {} MiB: subsample (--rbf-samples)",
                (n * n * 8) >> 20,
                params.max_kernel_bytes >> 20
            )));
        }
        if !(params.c.is_finite() && params.c > 0.0) {
            return Err(ClassifierError::Params(format!("C must be positive and finite, got {}", params.c)));
        }
        let width = params.width.unwrap_or_else(|| x.ncols() as f64 * x.var(0.0).max(1e-12));
        let classes = y.iter().max().map_or(0, |m| m + 1);
        let models = (0..classes)
            .into_par_iter()
            .map(|k| {
                let targets: Array1<bool> = y.mapv(|l| l == k);
                let data = Dataset::new(x.to_owned(), targets);
                let svm = Svm::<f64, bool>::params().pos_neg_weights(params.c, params.c).gaussian_kernel(width);
                svm.fit(&data).map_err(|source| ClassifierError::Rbf { class: k, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { models, width })
    }

    /// The class with the largest decision value, per row.
    pub fn predict(&self, x: ArrayView2<f64>) -> Array1<usize> {
        x.axis_iter(Axis(0))
            .map(|row| {
                let scores = self.models.iter().map(|m| m.weighted_sum(&row) - m.rho);
                scores.enumerate().fold((0, f64::NEG_INFINITY), |best, (k, s)| if s > best.1 { (k, s) } else { best }).0
            })
            .collect()
    }
}

/// Fits on the first `samples` training rows and returns test predictions.
pub fn fit_predict(
    train: (&Array2<f64>, &Array1<usize>),
    test: &Array2<f64>,
    samples: usize,
    params: RbfParams,
) -> Result<(Array1<usize>, f64), ClassifierError> {
    let n = samples.min(train.0.nrows());
    let x = train.0.slice(ndarray::s![..n, ..]);
    let y = train.1.slice(ndarray::s![..n]).to_owned();
    let model = RbfSvm::fit(x, &y, params)?;
    Ok((model.predict(test.view()), model.width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn rings_a_linear_model_cannot_split_are_split_and_huge_kernels_refused() {
        // Class 0 inside radius 1, class 1 on a ring of radius 2–3: not linearly separable.
        let mut rng = StdRng::seed_from_u64(5);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..200 {
            let class = i % 2;
            let r = if class == 0 { rng.random_range(0.0..1.0) } else { rng.random_range(2.0..3.0) };
            let a: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            x.extend([r * a.cos(), r * a.sin()]);
            y.push(class);
        }
        let x = Array2::from_shape_vec((200, 2), x).unwrap();
        let y = Array1::from(y);
        let model = RbfSvm::fit(x.view(), &y, RbfParams::default()).unwrap();
        let accuracy = model.predict(x.view()).iter().zip(&y).filter(|(p, t)| p == t).count() as f64 / 200.0;
        assert!(accuracy > 0.95, "RBF accuracy on rings {accuracy}");
        let linear = crate::LinearSvcParams::default().fit(&Dataset::new(x.clone(), y.clone())).unwrap();
        let linear_accuracy = linear.predict(&x).iter().zip(&y).filter(|(p, t)| p == t).count() as f64 / 200.0;
        assert!(linear_accuracy < 0.8, "a linear model cannot split rings: {linear_accuracy}");
        let tight = RbfParams { max_kernel_bytes: 1000, ..RbfParams::default() };
        let err = RbfSvm::fit(x.view(), &y, tight).err().unwrap().to_string();
        assert!(err.contains("subsample"), "{err}");
    }
}
