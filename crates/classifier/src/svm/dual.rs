//! The dual coordinate-descent solver of one binary problem: the training rows in
//! fixed-width blocks, and the solver itself, with an AVX2 build chosen at run time.

use ndarray::ArrayView2;

use super::{Convergence, LinearSvcParams};

/// The training rows as the solver reads them: each row's features, the constant
/// intercept feature 1, and zeros up to a whole number of blocks of `block` values.
/// Zeros change no sum, so the padding does not change the fit.
pub(super) struct Rows<R> {
    pub(super) values: Vec<R>,
    /// Values per block: one of [`BLOCK_WIDTHS`].
    pub(super) block: usize,
    /// Blocks per row.
    pub(super) blocks: usize,
}

/// Block widths the solver is compiled for: with the width known, its loops unroll and
/// the dot product runs as four independent chains (the 20 latent features and the
/// intercept fit one block of 24).
pub(super) const BLOCK_WIDTHS: [usize; 4] = [8, 16, 24, 32];

impl<R: RowValue> Rows<R> {
    /// The rows of `x` with the intercept feature appended and padded.
    pub(super) fn new(x: ArrayView2<f64>) -> Self {
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
pub(super) trait RowValue: Copy + Into<f64> + Send + Sync {
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
pub(super) struct XorShift(u64);

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
pub(super) const PREFETCH_DISTANCE: usize = 4;

/// Hints the CPU to bring the cache lines `data` spans into L1 (a no-op off x86-64).
#[inline(always)]
pub(super) fn prefetch<T>(data: &[T]) {
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
pub(super) struct BinaryFit {
    pub(super) w: Vec<f64>,
    pub(super) convergence: Convergence,
}

/// One dual coordinate's state: its value α, its label ±1, and `Q_ii + D_ii`.
#[repr(align(32))]
pub(super) struct Coordinate {
    alpha: f64,
    y: f64,
    qd: f64,
}

/// Dual coordinate descent for `min_α ½ αᵀ(Q + D)α − eᵀα, α ≥ 0` with
/// `Q_ij = y_i y_j x_i·x_j` and `D = 1/(2C)`, keeping `w = Σ α_i y_i x_i`, over the
/// rows `x_i` of `rows`. Returns the fit (weights of the padded width) and the dual
/// variables α.
pub(super) fn solve_binary<R: RowValue>(
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
pub(super) fn solve_blocks<R: RowValue, const N: usize>(
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
pub(super) fn solve_avx2<R: RowValue, const N: usize>(
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
pub(super) fn solve_rows<R: RowValue, const N: usize>(
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
pub(super) fn dot<R: RowValue, const N: usize>(x: &[[R; N]], w: &[[f64; N]]) -> f64 {
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
pub(super) fn solve<R: RowValue, const N: usize, W: AsRef<[[f64; N]]> + AsMut<[[f64; N]]>>(
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
