//! L2-regularised squared-hinge linear SVM, solved in the dual by coordinate descent
//! with shrinking (Hsieh et al., ICML 2008; LIBLINEAR's `L2R_L2LOSS_SVC_DUAL`, which is
//! what scikit-learn's `LinearSVC(dual=True)` runs), one-vs-rest over the classes.
//!
//! As in LIBLINEAR with `intercept_scaling = 1`, the intercept is the weight of an extra
//! feature of constant value 1, regularised like the other weights.

use linfa::dataset::AsSingleTargets;
use linfa::prelude::*;
use ndarray::{Array1, Array2, ArrayBase, ArrayView1, ArrayView2, Data, Ix2};
use rayon::prelude::*;

use crate::ClassifierError;

mod dual;
use dual::{BinaryFit, RowValue, Rows, solve_binary};

/// Unchecked hyper-parameters of [`LinearSvc`]; [`LinearSvcParams::check`] validates them.
/// The defaults are scikit-learn's `LinearSVC()` as the reference experiment used it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LinearSvcParams {
    c: f64,
    tol: f64,
    max_iter: usize,
    seed: u64,
}

impl Default for LinearSvcParams {
    fn default() -> Self {
        Self { c: 1.0, tol: 1e-5, max_iter: 1000, seed: 0 }
    }
}

impl LinearSvcParams {
    /// Inverse regularisation strength `C` (default 1).
    pub fn c(mut self, c: f64) -> Self {
        self.c = c;
        self
    }
    /// Stopping tolerance on the projected-gradient spread (default 1e-5).
    pub fn tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }
    /// Maximum passes over the data per class (default 1000).
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }
    /// Seed of the per-pass random order of the coordinates (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks `c > 0`, `tol > 0` (both finite) and `max_iter ≥ 1`.
    pub fn check(&self) -> Result<&Self, ClassifierError> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(ClassifierError::Params(format!("C must be positive and finite, got {}", self.c)));
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(ClassifierError::Params(format!("tol must be positive and finite, got {}", self.tol)));
        }
        if self.max_iter == 0 {
            return Err(ClassifierError::Params("max_iter must be at least 1".into()));
        }
        Ok(self)
    }
}

/// How the dual solver ended for one binary (one-vs-rest) problem.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Convergence {
    /// Passes over the (active) coordinates.
    pub iterations: usize,
    /// Spread `max PG − min PG` of the projected gradient in the last pass: the maximal
    /// KKT violation, compared against `tol`.
    pub max_violation: f64,
    /// Whether the violation fell to `tol` or below before `max_iter`.
    pub converged: bool,
    /// Training samples with a non-zero dual variable.
    pub support_vectors: usize,
}

/// A fitted one-vs-rest linear SVM.
#[derive(Debug, Clone)]
pub struct LinearSvc {
    /// `(classes, features)` weights.
    pub weights: Array2<f64>,
    /// One intercept per class.
    pub bias: Array1<f64>,
    /// Solver outcome per class.
    pub convergence: Vec<Convergence>,
}

impl LinearSvc {
    /// Decision values `w_k · x + b_k`, shape `(samples, classes)`.
    pub fn decision_function<D: Data<Elem = f64>>(&self, x: &ArrayBase<D, Ix2>) -> Array2<f64> {
        x.dot(&self.weights.t()) + &self.bias
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>> for LinearSvc {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
        let scores = self.decision_function(x);
        for (row, out) in scores.rows().into_iter().zip(y.iter_mut()) {
            *out = row.iter().enumerate().fold(0, |best, (k, &s)| if s > row[best] { k } else { best });
        }
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
        Array1::zeros(x.nrows())
    }
}

impl<D, T> Fit<ArrayBase<D, Ix2>, T, ClassifierError> for LinearSvcParams
where
    D: Data<Elem = f64>,
    T: AsSingleTargets<Elem = usize>,
{
    type Object = LinearSvc;

    /// Fits one binary SVM per class `0..=max label` (in parallel).
    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<LinearSvc, ClassifierError> {
        self.check()?;
        let x = dataset.records();
        let labels = dataset.as_single_targets();
        let (n, d) = x.dim();
        if n == 0 || d == 0 || labels.len() != n {
            return Err(ClassifierError::Params(format!("cannot fit {n}x{d} features with {} labels", labels.len())));
        }
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let first = labels[0];
        if labels.iter().all(|&l| l == first) {
            return Err(ClassifierError::Params(format!(
                "the training labels hold a single class ({first}): a classifier needs samples of at least two"
            )));
        }
        // Features that came from f32 (latents do) are stored as f32: the same values,
        // half the memory traffic per coordinate step, bit-identical fits.
        let fits = if x.iter().all(|&v| f64::from(v as f32) == v) {
            self.fit_classes::<f32>(x.view(), labels.view(), classes)
        } else {
            self.fit_classes::<f64>(x.view(), labels.view(), classes)
        };
        let mut weights = Array2::zeros((classes, d));
        let mut bias = Array1::zeros(classes);
        for (k, fit) in fits.iter().enumerate() {
            weights.row_mut(k).assign(&Array1::from(fit.w[..d].to_vec()));
            bias[k] = fit.w[d];
        }
        Ok(LinearSvc { weights, bias, convergence: fits.into_iter().map(|f| f.convergence).collect() })
    }
}

impl LinearSvcParams {
    /// One binary problem per class, in parallel, with rows stored as `R`.
    fn fit_classes<R: RowValue>(
        &self,
        x: ArrayView2<f64>,
        labels: ArrayView1<usize>,
        classes: usize,
    ) -> Vec<BinaryFit> {
        let rows = Rows::<R>::new(x);
        (0..classes)
            .into_par_iter()
            .map(|k| {
                let y: Vec<f64> = labels.iter().map(|&l| if l == k { 1.0 } else { -1.0 }).collect();
                solve_binary(&rows, &y, self, self.seed.wrapping_add(k as u64)).0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::dual::*;
    use super::*;
    use ndarray::array;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// The KKT conditions of the dual at `alpha` for the features `x` (intercept feature
    /// appended here): `G_i ≥ −tol` where `α_i = 0`, `|G_i| ≤ tol` where `α_i > 0`,
    /// `w = Σ α_i y_i x_i`, and the padding's weights stay zero.
    fn assert_kkt(x: ArrayView2<f64>, y: &[f64], c: f64, (fit, alpha): &(BinaryFit, Vec<f64>), tol: f64) {
        let diag = 0.5 / c;
        let dim = x.ncols() + 1;
        let mut w = vec![0.0; dim];
        for (i, &yi) in y.iter().enumerate() {
            let xi: Vec<f64> = x.row(i).iter().copied().chain([1.0]).collect();
            let g = yi * xi.iter().zip(&fit.w).map(|(a, b)| a * b).sum::<f64>() - 1.0 + diag * alpha[i];
            if alpha[i] == 0.0 {
                assert!(g >= -tol, "sample {i}: alpha 0 but gradient {g}");
            } else {
                assert!(g.abs() <= tol, "sample {i}: alpha {} but gradient {g}", alpha[i]);
            }
            w.iter_mut().zip(&xi).for_each(|(wk, xk)| *wk += alpha[i] * yi * xk);
        }
        for (a, b) in w.iter().zip(&fit.w) {
            assert!((a - b).abs() < 1e-9, "w is not Σ α y x: {w:?} vs {:?}", fit.w);
        }
        assert!(fit.w[dim..].iter().all(|&v| v == 0.0), "padding weights moved: {:?}", &fit.w[dim..]);
    }

    #[test]
    fn separable_2d_reaches_the_dual_optimum_and_separates() {
        // Two clusters split by x + y = 0.
        let x = array![[2.0, 1.0], [1.5, 2.5], [3.0, 0.5], [-1.0, -2.0], [-2.5, -0.5], [-1.5, -1.5]];
        let y = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0];
        let solution = solve_binary(&Rows::<f64>::new(x.view()), &y, &LinearSvcParams::default(), 0);
        assert_kkt(x.view(), &y, 1.0, &solution, 1e-4);
        let fit = solution.0;
        assert!(fit.convergence.converged, "{:?}", fit.convergence);
        assert!(fit.convergence.max_violation <= 1e-5);
        for (i, &yi) in y.iter().enumerate() {
            let score = x[(i, 0)] * fit.w[0] + x[(i, 1)] * fit.w[1] + fit.w[2];
            assert!(score * yi > 0.0, "sample {i} misclassified");
        }
    }

    #[test]
    fn rows_wider_than_one_block_reach_the_dual_optimum() {
        // 40 features and the intercept: two blocks of 32 values.
        let mut rng = StdRng::seed_from_u64(5);
        let x = Array2::from_shape_fn((200, 40), |_| rng.random_range(-1.0..1.0));
        let y: Vec<f64> = x.rows().into_iter().map(|r| if r[0] + r[7] - r[39] > 0.2 { 1.0 } else { -1.0 }).collect();
        let rows = Rows::<f64>::new(x.view());
        assert_eq!((rows.block, rows.blocks, rows.values.len()), (32, 2, 200 * 64));
        let solution = solve_binary(&rows, &y, &LinearSvcParams::default(), 1);
        assert!(solution.0.convergence.converged, "{:?}", solution.0.convergence);
        assert_kkt(x.view(), &y, 1.0, &solution, 1e-4);
    }

    #[test]
    fn overlapping_three_classes_fit_through_linfa_traits() {
        // Three overlapping clusters around (0,0), (3,0), (0,3), generated deterministically.
        let mut rng = StdRng::seed_from_u64(3);
        let centres = [(0.0, 0.0), (3.0, 0.0), (0.0, 3.0)];
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..300 {
            let k = rng.random_range(0..3usize);
            let (cx, cy) = centres[k];
            x.extend([cx + rng.random_range(-1.5..1.5), cy + rng.random_range(-1.5..1.5)]);
            labels.push(k);
        }
        let x = Array2::from_shape_vec((300, 2), x).unwrap();
        let dataset = Dataset::new(x.clone(), Array1::from(labels.clone()));
        let model = LinearSvcParams::default().fit(&dataset).unwrap();
        assert!(model.convergence.iter().all(|c| c.converged && c.max_violation <= 1e-5), "{:?}", model.convergence);
        // Each binary problem satisfies the KKT conditions.
        let rows = Rows::<f64>::new(x.view());
        for k in 0..3 {
            let y: Vec<f64> = labels.iter().map(|&l| if l == k { 1.0 } else { -1.0 }).collect();
            let solution = solve_binary(&rows, &y, &LinearSvcParams::default(), k as u64);
            assert_kkt(x.view(), &y, 1.0, &solution, 1e-4);
            assert!((solution.0.w[0] - model.weights[(k, 0)]).abs() < 1e-6);
        }
        let predicted = model.predict(&x);
        let accuracy = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / 300.0;
        assert!(accuracy > 0.85, "accuracy {accuracy}");
        assert_eq!(model.predict(&array![[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]).to_vec(), vec![0, 1, 2]);
    }

    #[test]
    fn f32_storage_gives_bit_identical_fits() {
        // Values exactly representable in f32, as latents read from NPY are.
        let x = Array2::from_shape_fn((200, 3), |(i, j)| f64::from(((i * 7 + j * 13) % 17) as f32 * 0.37 - 2.5));
        let labels = Array1::from_shape_fn(200, |i| (i * 7 % 17) % 3);
        let params = LinearSvcParams::default().max_iter(50);
        let as_f32 = params.fit_classes::<f32>(x.view(), labels.view(), 3);
        let as_f64 = params.fit_classes::<f64>(x.view(), labels.view(), 3);
        for (a, b) in as_f32.iter().zip(&as_f64) {
            assert_eq!(a.w, b.w);
            assert_eq!(a.convergence.iterations, b.convergence.iterations);
        }
    }

    /// The AVX2 build of the solver gives the baseline build's bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_solver_is_bit_identical() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let x = Array2::from_shape_fn((300, 20), |(i, j)| ((i * 31 + j * 17) % 23) as f64 * 0.11 - 1.2);
        let y: Vec<f64> = (0..300).map(|i| if (i * 7) % 5 < 2 { 1.0 } else { -1.0 }).collect();
        let rows = Rows::<f64>::new(x.view());
        let blocks = rows.values.as_chunks::<24>().0;
        let params = LinearSvcParams::default().max_iter(30);
        let plain = solve_rows(blocks, 1, &y, &params, 3);
        // SAFETY: AVX2 and FMA are present, checked above.
        let avx2 = unsafe { solve_avx2(blocks, 1, &y, &params, 3) };
        assert!(plain.0.w.iter().any(|&w| w != 0.0));
        assert_eq!((plain.0.w, plain.1), (avx2.0.w, avx2.1));
    }

    #[test]
    fn invalid_params_are_refused() {
        let dataset = Dataset::new(array![[0.0], [1.0]], array![0usize, 1]);
        for params in [
            LinearSvcParams::default().c(0.0),
            LinearSvcParams::default().c(f64::NAN),
            LinearSvcParams::default().tol(-1.0),
            LinearSvcParams::default().max_iter(0),
        ] {
            assert!(matches!(params.fit(&dataset), Err(ClassifierError::Params(_))), "{params:?}");
        }
    }
}
