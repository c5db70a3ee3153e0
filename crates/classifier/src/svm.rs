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

/// Unchecked hyper-parameters of [`LinearSvc`]; [`LinearSvcParams::check`] validates them.
/// The defaults are scikit-learn's `LinearSVC()` as the seed used it.
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

/// The training rows as the solver reads them: each row's features, the constant
/// intercept feature 1, and zeros up to a whole number of blocks of `block` values.
/// Zeros change no sum, so the padding does not change the fit.
pub(crate) struct Rows<R> {
    values: Vec<R>,
    /// Values per block: one of [`BLOCK_WIDTHS`].
    block: usize,
    /// Blocks per row.
    blocks: usize,
}

/// Block widths the solver is compiled for: with the width known, its loops unroll and
/// the dot product runs as four independent chains (the 20 latent features and the
/// intercept fit one block of 24).
const BLOCK_WIDTHS: [usize; 4] = [8, 16, 24, 32];

impl<R: RowValue> Rows<R> {
    /// The rows of `x` with the intercept feature appended and padded.
    pub(crate) fn new(x: ArrayView2<f64>) -> Self {
        let dim = x.ncols() + 1;
        let block = BLOCK_WIDTHS.into_iter().find(|&w| w >= dim).unwrap_or(BLOCK_WIDTHS[3]);
        let width = dim.next_multiple_of(block);
        let mut values = Vec::with_capacity(x.nrows() * width);
        for row in x.rows() {
            values.extend(row.iter().map(|&v| R::from_f64(v)));
            values.push(R::from_f64(1.0));
            values.resize(values.len() + width - dim, R::from_f64(0.0));
        }
        Self { values, block, blocks: width / block }
    }
}

/// How the solver stores feature values; it always computes in f64.
pub(crate) trait RowValue: Copy + Into<f64> + Send + Sync {
    /// The stored form of `v` (callers check that it is exact).
    fn from_f64(v: f64) -> Self;
}

impl RowValue for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl RowValue for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// xorshift64*: the coordinate order needs speed (one draw per coordinate per pass), not
/// cryptographic quality; ChaCha cost a noticeable share of the solver's time.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in `0..n` (n ≥ 1), by multiply-shift.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(r >> 32) * n as u128) >> 32) as usize
    }
}

/// How many coordinates ahead the solver asks for the data it will need: a pass visits
/// rows in random order, so without this every row is a cache miss (measured: a third of
/// the solver's time on one load).
const PREFETCH_DISTANCE: usize = 4;

/// Hints the CPU to bring the cache lines `data` spans into L1 (a no-op off x86-64).
#[inline(always)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = data.as_ptr().cast::<i8>();
        let first_line = start as usize % 64;
        let mut offset = 0;
        while offset < first_line + size_of_val(data) {
            // SAFETY: SSE is part of the x86-64 baseline; a prefetch never faults, and
            // `wrapping_sub`/`wrapping_add` only compute an address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_sub(first_line).wrapping_add(offset)) };
            offset += 64;
        }
    }
}

/// Solution of one binary problem: primal weights (intercept last) and how it ended.
pub(crate) struct BinaryFit {
    pub(crate) w: Vec<f64>,
    pub(crate) convergence: Convergence,
}

/// One dual coordinate's state: its value α, its label ±1, and `Q_ii + D_ii`.
#[repr(align(32))]
struct Coordinate {
    alpha: f64,
    y: f64,
    qd: f64,
}

/// Dual coordinate descent for `min_α ½ αᵀ(Q + D)α − eᵀα, α ≥ 0` with
/// `Q_ij = y_i y_j x_i·x_j` and `D = 1/(2C)`, keeping `w = Σ α_i y_i x_i`, over the
/// rows `x_i` of `rows`. Returns the fit (weights of the padded width) and the dual
/// variables α.
pub(crate) fn solve_binary<R: RowValue>(
    rows: &Rows<R>,
    y: &[f64],
    params: &LinearSvcParams,
    seed: u64,
) -> (BinaryFit, Vec<f64>) {
    match rows.block {
        8 => solve_blocks::<R, 8>(rows, y, params, seed),
        16 => solve_blocks::<R, 16>(rows, y, params, seed),
        24 => solve_blocks::<R, 24>(rows, y, params, seed),
        _ => solve_blocks::<R, 32>(rows, y, params, seed),
    }
}

/// [`solve_rows`] with blocks of `N` values, compiled for AVX2 and FMA where the CPU
/// has them (for wider vectors: Rust never fuses a multiply and an add on its own, so
/// the fit is bit-identical either way).
fn solve_blocks<R: RowValue, const N: usize>(
    rows: &Rows<R>,
    y: &[f64],
    params: &LinearSvcParams,
    seed: u64,
) -> (BinaryFit, Vec<f64>) {
    let (blocks, rest) = rows.values.as_chunks::<N>();
    debug_assert!(rows.block == N && rest.is_empty() && blocks.len() == y.len() * rows.blocks);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { solve_avx2(blocks, rows.blocks, y, params, seed) };
    }
    solve_rows(blocks, rows.blocks, y, params, seed)
}

/// [`solve_rows`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn solve_avx2<R: RowValue, const N: usize>(
    blocks: &[[R; N]],
    per_row: usize,
    y: &[f64],
    params: &LinearSvcParams,
    seed: u64,
) -> (BinaryFit, Vec<f64>) {
    solve_rows(blocks, per_row, y, params, seed)
}

/// [`solve`] for rows of `per_row` blocks, the weights on the stack when a row is one
/// block (they then stay in registers).
#[inline(always)]
fn solve_rows<R: RowValue, const N: usize>(
    blocks: &[[R; N]],
    per_row: usize,
    y: &[f64],
    params: &LinearSvcParams,
    seed: u64,
) -> (BinaryFit, Vec<f64>) {
    if per_row == 1 {
        solve(blocks, y, params, seed, [[0.0; N]; 1])
    } else {
        solve(blocks, y, params, seed, vec![[0.0; N]; per_row])
    }
}

/// `x · w` as four interleaved partial sums (value index mod 4), added pairwise: four
/// independent chains instead of one.
#[inline(always)]
fn dot<R: RowValue, const N: usize>(x: &[[R; N]], w: &[[f64; N]]) -> f64 {
    let mut s = [0.0; 4];
    for (x, w) in x.iter().zip(w) {
        for k in 0..N {
            s[k % 4] += x[k].into() * w[k];
        }
    }
    (s[0] + s[1]) + (s[2] + s[3])
}

/// The solver proper, for rows of as many blocks of `N` values as the zero weights `w`
/// passed in have.
#[inline(always)]
fn solve<R: RowValue, const N: usize, W: AsRef<[[f64; N]]> + AsMut<[[f64; N]]>>(
    blocks: &[[R; N]],
    y: &[f64],
    params: &LinearSvcParams,
    seed: u64,
    mut w: W,
) -> (BinaryFit, Vec<f64>) {
    let per_row = w.as_ref().len();
    let n = y.len();
    let diag = 0.5 / params.c;
    let row = |i: usize| &blocks[i * per_row..(i + 1) * per_row];
    // α, y and the diagonal of Q + D side by side: a coordinate step then touches one
    // cache line for them instead of three (the rows are visited in random order).
    let mut coords: Vec<Coordinate> = (0..n)
        .map(|i| Coordinate {
            alpha: 0.0,
            y: y[i],
            qd: row(i).as_flattened().iter().map(|&v| v.into() * v.into()).sum::<f64>() + diag,
        })
        .collect();
    let mut index: Vec<usize> = (0..n).collect();
    let mut active = n;
    // With the squared hinge there is no upper bound on α, so only PGmax shrinks.
    let mut pg_max_old = f64::INFINITY;
    let mut rng = XorShift::new(seed);
    let mut iterations = 0;
    let mut violation = f64::INFINITY;
    while iterations < params.max_iter {
        for i in 0..active {
            let j = i + rng.below(active - i);
            index.swap(i, j);
        }
        let (mut pg_max, mut pg_min) = (f64::NEG_INFINITY, f64::INFINITY);
        let mut s = 0;
        while s < active {
            if let Some(&ahead) = index.get(s + PREFETCH_DISTANCE).filter(|_| s + PREFETCH_DISTANCE < active) {
                prefetch(row(ahead).as_flattened());
                prefetch(std::slice::from_ref(&coords[ahead]));
            }
            let i = index[s];
            let xi = row(i);
            let c = &mut coords[i];
            let g = c.y * dot(xi, w.as_ref()) - 1.0 + diag * c.alpha;
            let mut pg = g;
            if c.alpha == 0.0 {
                if g > pg_max_old {
                    // Shrink: this coordinate is at its bound and likely to stay there.
                    active -= 1;
                    index.swap(s, active);
                    continue;
                }
                pg = g.min(0.0);
            }
            pg_max = pg_max.max(pg);
            pg_min = pg_min.min(pg);
            if pg.abs() > 1e-12 {
                let old = c.alpha;
                c.alpha = (old - g / c.qd).max(0.0);
                let step = (c.alpha - old) * c.y;
                for (w, x) in w.as_mut().iter_mut().zip(xi) {
                    for k in 0..N {
                        w[k] += step * x[k].into();
                    }
                }
            }
            s += 1;
        }
        iterations += 1;
        violation = pg_max - pg_min;
        if violation <= params.tol {
            if active == n {
                break;
            }
            // Converged on the shrunk set: check every coordinate once more.
            active = n;
            pg_max_old = f64::INFINITY;
            continue;
        }
        pg_max_old = if pg_max <= 0.0 { f64::INFINITY } else { pg_max };
    }
    let converged = violation <= params.tol && active == n;
    let alpha: Vec<f64> = coords.iter().map(|c| c.alpha).collect();
    let support_vectors = alpha.iter().filter(|&&a| a > 0.0).count();
    (
        BinaryFit {
            w: w.as_ref().as_flattened().to_vec(),
            convergence: Convergence { iterations, max_violation: violation, converged, support_vectors },
        },
        alpha,
    )
}

#[cfg(test)]
mod tests {
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
