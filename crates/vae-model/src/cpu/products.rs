//! Matrix products on strided views, through the `gemm` crate (candle's CPU GEMM).

use gemm::Parallelism;
use rayon::prelude::*;

use super::SharedMut;
use super::kernels::bias_relu;

/// A strided matrix view for `gemm`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `data` as a row-major `rows × cols` matrix.
    pub(super) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// `data` as a `rows × cols` matrix whose rows start `row_stride` values apart.
    pub(super) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transposed view.
    pub(super) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst (a.rows × b.cols, row-major) = a · b`, or `+= a · b` when `accumulate`; the
/// product is spread over the cores when it is large enough to pay for it.
pub(super) fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    let parallelism = parallelism_for(&a, &b);
    matmul_with(dst, a, b, accumulate, parallelism);
}

/// Weights of at least this many values go through [`linear_product`]'s blocks.
pub(super) const LARGE_WEIGHT: usize = 1 << 20;

/// Values of the weight [`linear_product`] copies at a time on each core, at most (256 KB, a
/// quarter of an AMD Zen 4 core's L2 cache).
const WEIGHT_BLOCK: usize = 1 << 16;

/// Weight rows in one block of [`linear_product`], at most.
const MAX_BLOCK_ROWS: usize = 128;

/// Reductions longer than this are cut into runs of [`REDUCTION_RUN`] values by
/// [`linear_product`].
const LONG_RUN: usize = 1024;

/// Values of one run of a long reduction in [`linear_product`].
const REDUCTION_RUN: usize = 256;

/// A linear layer's forward product for a weight of at least [`LARGE_WEIGHT`] values:
/// `dst (x.rows × rows, row-major) = x · weightᵀ + bias`, then a ReLU if `relu`, for the
/// row-major `rows × cols` `weight`, each core computing the output's columns for a run
/// of blocks of at most [`MAX_BLOCK_ROWS`] of the weight's rows.
///
/// gemm packs a right-hand operand slowly when its rows are a multiple of 2 KB apart, as
/// the wide layers' are (18432 × 512 and 512 × 18432): a column of them falls into the
/// same few sets of the L1 cache (64 sets of 64-byte lines on x86 cores). So each core
/// copies [`WEIGHT_BLOCK`] values of its rows at a time into its part of `scratch`, rows
/// 64 bytes longer, multiplies by that block while it is in cache, and finishes each
/// block's columns (bias, ReLU) while they are in cache too. Copying the whole weight to
/// longer rows first, as before, wrote and read again 37.7 MB per product: at batch 128
/// the decoder's forward product took 18.3–20.8 ms that way and 14.6–15.8 ms by blocks,
/// the encoder's 16.6–17.8 and 15.0–16.7 ms (AMD EPYC Zen 4, alternated, BENCHMARKS.md
/// 2026-12-07). A reduction longer than [`LONG_RUN`] is cut into runs of
/// [`REDUCTION_RUN`] values summed in order. The blocks depend on the shapes only, so the
/// result does not depend on the number of cores.
pub(super) fn linear_product(
    dst: &mut [f32],
    x: Mat,
    (weight, bias): (&[f32], &[f32]),
    (rows, cols): (usize, usize),
    relu: bool,
    scratch: &mut Vec<f32>,
) {
    let b = x.rows;
    assert!(
        x.cols == cols && weight.len() == rows * cols && bias.len() == rows && dst.len() == b * rows && x.fits(),
        "matmul: shapes do not match"
    );
    if b == 0 || rows == 0 || cols == 0 {
        return;
    }
    let run = if cols <= LONG_RUN { cols } else { REDUCTION_RUN };
    let block_rows = (WEIGHT_BLOCK / run).min(MAX_BLOCK_ROWS);
    let stride = run + 16;
    let blocks = rows.div_ceil(block_rows);
    let cores = rayon::current_num_threads().clamp(1, blocks);
    let per_core = blocks.div_ceil(cores);
    scratch.resize(cores * block_rows * stride, 0.0);
    let out = SharedMut(dst.as_mut_ptr());
    scratch.par_chunks_mut(block_rows * stride).enumerate().for_each(|(core, block)| {
        let mine = (core * per_core * block_rows).min(rows)..((core + 1) * per_core * block_rows).min(rows);
        for first in mine.clone().step_by(block_rows) {
            let count = block_rows.min(mine.end - first);
            for k in (0..cols).step_by(run) {
                let len = run.min(cols - k);
                for (dst, src) in
                    block.chunks_exact_mut(stride).zip(weight[first * cols + k..].chunks(cols)).take(count)
                {
                    dst[..len].copy_from_slice(&src[..len]);
                }
                let a = Mat { data: &x.data[k * x.col_stride..], cols: len, ..x };
                let w = Mat::strided(block, count, len, stride).t();
                // SAFETY: the assertion above keeps columns `first..first + count` of
                // every row of the `b × rows` output inside `dst`, borrowed mutably for
                // the call; the cores' columns do not overlap, so no two threads write
                // the same value, and neither input aliases `dst`.
                unsafe { gemm_into(out.at(first), (rows, 1), a, w, k > 0, Parallelism::None) }
            }
            let bias = &bias[first..first + count];
            for row in 0..b {
                // SAFETY: as above, columns `first..first + count` of output row `row`,
                // written by this core only.
                let values = unsafe { std::slice::from_raw_parts_mut(out.at(row * rows + first), count) };
                for (v, bias) in values.iter_mut().zip(bias) {
                    *v = bias_relu(*v, *bias, relu);
                }
            }
        }
    });
}

/// All cores for products of at least 2²⁰ multiply-adds, one below that.
pub(super) fn parallelism_for(a: &Mat, b: &Mat) -> Parallelism {
    if a.rows * a.cols * b.cols >= 1 << 20 { Parallelism::Rayon(0) } else { Parallelism::None }
}

/// [`matmul`] with the given parallelism.
pub(super) fn matmul_with(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallelism: Parallelism) {
    product(dst, false, a, b, accumulate, parallelism);
}

/// `dst = a · b` (or `+=`), `dst` row-major or, with `column_major`, column-major.
pub(super) fn product(dst: &mut [f32], column_major: bool, a: Mat, b: Mat, accumulate: bool, parallelism: Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() == m * n && a.fits() && b.fits(), "matmul: shapes do not match");
    let strides = if column_major { (1, m) } else { (n, 1) };
    // SAFETY: the assertion keeps every index gemm computes from the shapes and strides
    // inside the three slices; `dst` is borrowed mutably, so it aliases neither input.
    unsafe { gemm_into(dst.as_mut_ptr(), strides, a, b, accumulate, parallelism) }
}

/// How [`matmul_per_core`] shares a product out between the cores.
#[derive(Clone, Copy)]
pub(super) enum Split {
    /// Each core computes a run of the output's rows.
    Rows,
    /// Each core computes a run of the output's columns.
    Columns,
}

/// `dst (row-major) = a · b`, each core computing its share of the output's rows or
/// columns in one single-threaded gemm call. On the thin wide products (a dimension of 32
/// to 512 against 18432) gemm's own threading leaves much of the second core idle: on
/// 2 cores the decoder's input gradient at batch 128 takes 7.2 ms this way against 9.8
/// through gemm's threads and 9.3 through faer's (Intel Xeon, BENCHMARKS.md 2026-12-05).
pub(super) fn matmul_per_core(dst: &mut [f32], a: Mat, b: Mat, split: Split) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() == m * n && a.fits() && b.fits(), "matmul: shapes do not match");
    if m == 0 || n == 0 {
        return;
    }
    let cores = rayon::current_num_threads().max(1);
    match split {
        Split::Rows => {
            let rows = m.div_ceil(cores).max(1);
            dst.par_chunks_mut(rows * n).enumerate().for_each(|(i, dst)| {
                let a = Mat { data: &a.data[i * rows * a.row_stride..], rows: dst.len() / n, ..a };
                product(dst, false, a, b, false, Parallelism::None);
            });
        }
        Split::Columns => {
            let cols = n.div_ceil(cores).max(1);
            let parts = n.div_ceil(cols);
            let dst = SharedMut(dst.as_mut_ptr());
            (0..parts).into_par_iter().for_each(|i| {
                let first = i * cols;
                let b = Mat { data: &b.data[first * b.col_stride..], cols: cols.min(n - first), ..b };
                // SAFETY: the assertion above keeps columns `first..first + b.cols` of
                // every row of the `m × n` output inside `dst`, which is borrowed
                // mutably for the call; the parts' columns do not overlap, so no two
                // threads write the same value, and neither input aliases `dst`.
                unsafe { gemm_into(dst.at(first), (n, 1), a, b, false, Parallelism::None) }
            });
        }
    }
}

/// `dst = a · b` (or `+=`) through gemm, `dst` with strides `(row, column)`.
///
/// # Safety
/// Every `dst + i·row + j·column` for `i < a.rows`, `j < b.cols` must be writable and
/// alias neither input, and `a` and `b` must fit their slices ([`Mat::fits`]).
unsafe fn gemm_into(
    dst: *mut f32,
    (row_stride, col_stride): (usize, usize),
    a: Mat,
    b: Mat,
    accumulate: bool,
    parallelism: Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            col_stride as isize,
            row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split, on odd shapes and transposed views, shared out between three threads
    /// (uneven parts, one part wider than the rest), gives gemm's single-call product.
    #[test]
    fn per_core_products_match_one_product() {
        let values = |n: usize, seed: usize| (0..n).map(|i| ((i * 37 + seed) % 23) as f32 - 11.0).collect::<Vec<_>>();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, k, n) in [(7, 13, 5), (1, 9, 11), (20, 3, 2), (5, 40, 1)] {
            let (a_rows, a_cols, b_rows, b_cols) =
                (values(m * k, 1), values(k * m, 2), values(k * n, 3), values(n * k, 4));
            let a_views = [Mat::rows(&a_rows, m, k), Mat::rows(&a_cols, k, m).t()];
            let b_views = [Mat::rows(&b_rows, k, n), Mat::rows(&b_cols, n, k).t()];
            for (a, b) in a_views.iter().flat_map(|a| b_views.iter().map(move |b| (*a, *b))) {
                let mut want = vec![0.0; m * n];
                product(&mut want, false, a, b, false, Parallelism::None);
                for split in [Split::Rows, Split::Columns] {
                    let mut got = vec![f32::NAN; m * n];
                    pool.install(|| matmul_per_core(&mut got, a, b, split));
                    assert_eq!(got, want, "{m}x{k}x{n}");
                }
            }
        }
    }

    /// The blocked layer product, on shapes with partial blocks and a reduction cut into
    /// runs, shared out between three threads, matches the plain product plus bias (and
    /// ReLU) to rounding, and gives the same bits on one thread as on three.
    #[test]
    fn linear_product_matches_the_plain_product() {
        let values =
            |n: usize, seed: usize| (0..n).map(|i| ((i * 31 + seed) % 19) as f32 / 8.0 - 1.1).collect::<Vec<_>>();
        let pools = [1, 3].map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap());
        for (b, rows, cols) in [(5, 300, 2500), (3, 1100, 40), (1, 17, 1030)] {
            let (x, weight, bias) = (values(b * cols, 1), values(rows * cols, 2), values(rows, 3));
            let mut want = vec![0.0; b * rows];
            product(
                &mut want,
                false,
                Mat::rows(&x, b, cols),
                Mat::rows(&weight, rows, cols).t(),
                false,
                Parallelism::None,
            );
            for relu in [false, true] {
                let results = pools.each_ref().map(|pool| {
                    let (mut got, mut scratch) = (vec![f32::NAN; b * rows], Vec::new());
                    let x = Mat::rows(&x, b, cols);
                    pool.install(|| linear_product(&mut got, x, (&weight, &bias), (rows, cols), relu, &mut scratch));
                    got
                });
                assert_eq!(results[0], results[1], "{b}x{rows}x{cols}: threads changed the bits");
                for (i, (got, want)) in results[0].iter().zip(&want).enumerate() {
                    let want = want + bias[i % rows];
                    let want = if relu { want.max(0.0) } else { want };
                    assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "{b}x{rows}x{cols}: {got} vs {want}");
                }
            }
        }
    }
}
