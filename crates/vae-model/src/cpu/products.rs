//! Matrix products on strided views, through the `gemm` crate (candle's CPU GEMM).

use gemm::Parallelism;
use rayon::prelude::*;

use super::SharedMut;

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

/// Row lengths (in values) that make gemm slow when it packs the rows of a large
/// right-hand operand: rows a multiple of 2 KB apart fall into the same few sets of the L1
/// cache (which has 64 sets of 64-byte lines on x86 cores) while the packing reads a
/// column of them. The wide layers' weights, 512 × 18432 and 18432 × 512, have such rows.
const ALIASED_ROW: usize = 512;

/// Weights of at least this many values are worth copying to [`unaliased`] rows.
const LARGE_WEIGHT: usize = 1 << 20;

/// The row-major `rows × cols` matrix `data`, copied into `scratch` with rows 64 bytes
/// longer if it is large and its rows are [`ALIASED_ROW`] long: gemm then packs it without
/// cache conflicts. The forward products of the two wide layers at batch 128 on an AMD
/// EPYC Zen 4 (AVX-512): 24.2 → 13.9 ms and 20.9 → 14.0 ms with the rows 64 bytes
/// longer, for a copy of about 3.5 ms (BENCHMARKS.md, 2026-12-06).
pub(super) fn unaliased<'a>(data: &'a [f32], (rows, cols): (usize, usize), scratch: &'a mut Vec<f32>) -> Mat<'a> {
    if !cols.is_multiple_of(ALIASED_ROW) || rows * cols < LARGE_WEIGHT {
        return Mat::rows(data, rows, cols);
    }
    let stride = cols + 16;
    scratch.resize(rows * stride, 0.0);
    let rows_per_task = (1usize << 14).div_ceil(cols);
    let chunks = scratch.par_chunks_mut(stride).zip(data.par_chunks_exact(cols));
    chunks.with_min_len(rows_per_task).for_each(|(dst, src)| dst[..cols].copy_from_slice(src));
    Mat::strided(scratch, rows, cols, stride)
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

    /// A large weight with rows of a multiple of [`ALIASED_ROW`] values is copied to
    /// longer rows, and products read through the copy give the same values; a small
    /// one or one with other rows is used in place.
    #[test]
    fn unaliased_weights_give_the_same_products() {
        let values = |n: usize| (0..n).map(|i| ((i * 31 % 19) as f32 - 9.0) / 8.0).collect::<Vec<_>>();
        let (rows, cols, batch) = (LARGE_WEIGHT / ALIASED_ROW, ALIASED_ROW, 3);
        let (weight, x) = (values(rows * cols), values(batch * cols));
        let mut scratch = Vec::new();
        let copied = unaliased(&weight, (rows, cols), &mut scratch);
        assert!(copied.row_stride > cols && copied.fits());
        let (mut want, mut got) = (vec![0.0; batch * rows], vec![f32::NAN; batch * rows]);
        matmul(&mut want, Mat::rows(&x, batch, cols), Mat::rows(&weight, rows, cols).t(), false);
        matmul(&mut got, Mat::rows(&x, batch, cols), copied.t(), false);
        assert_eq!(got, want);
        for (rows, cols) in [(rows / 2, cols), (rows, cols + 1)] {
            let weight = values(rows * cols);
            assert_eq!(unaliased(&weight, (rows, cols), &mut scratch).row_stride, cols);
        }
    }
}
