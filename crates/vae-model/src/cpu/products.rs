//! Matrix products on strided views, through the `gemm` crate (candle's CPU GEMM) or faer.

use gemm::Parallelism;

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
    let (dst_row_stride, dst_col_stride) = if column_major { (1, m) } else { (n, 1) };
    // SAFETY: the assertion keeps every index gemm computes from the shapes and strides
    // inside the three slices; `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_col_stride as isize,
            dst_row_stride as isize,
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

/// `dst (row-major) = a · b` by faer's matmul (its own x86 kernels, on all cores): faster
/// than gemm's on the encoder's 512-row chunks (BENCHMARKS.md), and on the shapes
/// measured the same bits.
pub(super) fn matmul_faer<'a>(dst: &mut [f32], a: Mat<'a>, b: Mat<'a>) {
    assert!(b.rows == a.cols && dst.len() == a.rows * b.cols && a.fits() && b.fits(), "matmul: shapes do not match");
    let view = |m: Mat<'a>| {
        if m.col_stride == 1 {
            faer::MatRef::from_row_major_slice_with_stride(m.data, m.rows, m.cols, m.row_stride)
        } else {
            faer::MatRef::from_row_major_slice_with_stride(m.data, m.cols, m.rows, m.col_stride).transpose()
        }
    };
    let dst = faer::MatMut::from_row_major_slice_mut(dst, a.rows, b.cols);
    faer::linalg::matmul::matmul(dst, faer::Accum::Replace, view(a), view(b), 1.0, faer::Par::rayon(0));
}
