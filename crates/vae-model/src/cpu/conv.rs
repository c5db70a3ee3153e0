//! Direct [`KERNEL`]×[`KERNEL`] convolutions (stride 1, unpadded), their transposes and
//! their gradients, without im2col columns: every one of the four layers' products is one
//! of two kernels, written once over [`Simd`] and compiled for AVX-512, AVX2 + FMA and
//! plain scalar code, the widest chosen at run time with gemm's ([`Isa::best`]).
//!
//! - [`correlate`]: `out[o, y, x] = Σ_c Σ_(i,j) K[o, c, i, j] · in[c, y + i, x + j]`, the
//!   valid correlation. It is the convolution's forward pass and the transposed
//!   convolution's input gradient; on an input zero-padded by `KERNEL − 1` and with the
//!   kernel flipped, the convolution's input gradient and the transposed convolution's
//!   forward pass. The output is computed on a *wide* grid, rows as long as the input's,
//!   so that every tap reads one contiguous run of the input (the `KERNEL − 1` extra
//!   columns of each row are discarded when the result is copied out with bias and ReLU).
//! - [`tap_sums`]: `dW[f, s, i, j] = Σ_(y,x) first[f, y, x] · second[s, y + i, x + j]`, the
//!   weight gradient of either layer (for the convolution, `first` is the output's
//!   gradient and `second` the input; for the transposed one, the input and the output's
//!   gradient), summed over the images.
//!
//! On AVX-512 a tile of [`correlate`] keeps 8 output channels × 48 pixels in 24 of the 32
//! vector registers, one of [`tap_sums`] 32 rows of `first` × the 9 taps of one channel of
//! `second` in 18; with AVX2's 16 registers, 4 channels × 16 pixels and 16 rows × 3 taps.

use rayon::prelude::*;

use super::kernels::{bias_relu, relu_gate};
use super::simd::{Isa, Scalar, Simd};
use super::{Grads, Params};
use crate::{KERNEL, Layer};

const TAPS: usize = KERNEL * KERNEL;

impl Isa {
    /// Output channels and pixels of one tile of [`correlate`] (its `MR` and `NV · LANES`)
    /// for `outputs` channels: one channel at a time where there are only one or two.
    fn correlate_tile(self, outputs: usize) -> (usize, usize) {
        match (self, outputs <= 2) {
            (Self::Avx512, false) => (8, 48),
            (Self::Avx512, true) => (1, 128),
            (Self::Avx2, false) => (4, 16),
            (Self::Avx2, true) => (1, 64),
            (Self::Scalar, false) => (4, 4),
            (Self::Scalar, true) => (1, 8),
        }
    }

    /// Rows of `first` in one tile of [`tap_sums`] (its `FV · LANES`).
    fn tap_sums_rows(self) -> usize {
        match self {
            Self::Avx512 => 32,
            Self::Avx2 => 16,
            Self::Scalar => 4,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm512_loadu_si512, _mm512_storeu_si512};

    use crate::cpu::simd::x86::{Avx2, Avx512, transpose_16x16};

    /// [`super::transpose_planes`] for a multiple of 16 planes, 16 planes × 16 positions
    /// at a time through registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; the sizes are asserted.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_planes_avx512(src: &[f32], positions: usize, rows: usize, dst: &mut [f32]) {
        let planes = src.len() / positions;
        assert!(
            planes.is_multiple_of(16)
                && src.len() == planes * positions
                && planes <= rows
                && dst.len() >= positions * rows,
            "transpose: buffer sizes do not match"
        );
        let whole = positions / 16 * 16;
        for c0 in (0..planes).step_by(16) {
            for q0 in (0..whole).step_by(16) {
                // SAFETY: 16 values of each of planes `c0..c0 + 16`, inside `src` as asserted.
                let r = std::array::from_fn(|i| unsafe {
                    _mm512_loadu_si512(src.as_ptr().add((c0 + i) * positions + q0).cast())
                });
                for (j, column) in transpose_16x16(r).into_iter().enumerate() {
                    // SAFETY: 16 values of row `q0 + j` from `c0`, inside `dst` as asserted.
                    unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add((q0 + j) * rows + c0).cast(), column) };
                }
            }
            for c in c0..c0 + 16 {
                for q in whole..positions {
                    dst[q * rows + c] = src[c * positions + q];
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn correlate_avx512<const MR: usize, const NV: usize>(
        input: &[f32],
        planes: (usize, usize),
        taps: &[f32],
        wide: &mut [f32],
    ) {
        unsafe { super::correlate_with::<Avx512, MR, NV>(input, planes, taps, wide) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn correlate_avx2<const MR: usize, const NV: usize>(
        input: &[f32],
        planes: (usize, usize),
        taps: &[f32],
        wide: &mut [f32],
    ) {
        unsafe { super::correlate_with::<Avx2, MR, NV>(input, planes, taps, wide) }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tap_sums_avx512(first_t: &[f32], second: &[f32], planes: (usize, usize), acc: &mut [f32]) {
        unsafe { super::tap_sums_with::<Avx512, 2, 3>(first_t, second, planes, acc) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tap_sums_avx2(first_t: &[f32], second: &[f32], planes: (usize, usize), acc: &mut [f32]) {
        unsafe { super::tap_sums_with::<Avx2, 2, 1>(first_t, second, planes, acc) }
    }
}

/// A kernel laid out for [`correlate`]: `[output block][input channel][tap][MR]`, the
/// output channels padded with zeros to a multiple of the tile's `MR`.
pub(super) struct Taps {
    isa: Isa,
    /// [`Isa::correlate_tile`] for these outputs.
    tile: (usize, usize),
    outputs: usize,
    inputs: usize,
    values: Vec<f32>,
}

impl Taps {
    /// The kernel `k(output, input, tap)` (taps row-major over the `KERNEL`×`KERNEL`
    /// window) for `outputs × inputs` channels, laid out for `isa`.
    pub(super) fn new(isa: Isa, (outputs, inputs): (usize, usize), k: impl Fn(usize, usize, usize) -> f32) -> Self {
        let tile = isa.correlate_tile(outputs);
        let mr = tile.0;
        let blocks = outputs.div_ceil(mr);
        let mut values = vec![0.0; blocks * mr * inputs * TAPS];
        for (i, v) in values.iter_mut().enumerate() {
            let (m, tap, input, block) = (i % mr, i / mr % TAPS, i / (mr * TAPS) % inputs, i / (mr * TAPS * inputs));
            let output = block * mr + m;
            if output < outputs {
                *v = k(output, input, tap);
            }
        }
        Self { isa, tile, outputs, inputs, values }
    }

    fn padded_outputs(&self) -> usize {
        self.values.len() / (self.inputs * TAPS)
    }
}

/// Values of the wide grid [`correlate`] writes for inputs of side `p`: the padded output
/// channels × the output rows (each `p` long) rounded up to whole tiles.
fn wide_len(taps: &Taps, p: usize) -> usize {
    taps.padded_outputs() * wide_row_len(taps, p)
}

fn wide_row_len(taps: &Taps, p: usize) -> usize {
    ((p + 1 - KERNEL) * p).next_multiple_of(taps.tile.1)
}

/// Values [`correlate`] reads of an input of `channels` planes of side `p`: a little past
/// the last plane, for the wide grid's last tile.
fn input_reach(taps: &Taps, (channels, p): (usize, usize)) -> usize {
    (channels - 1) * p * p + wide_row_len(taps, p) + (KERNEL - 1) * (p + 1)
}

/// The valid correlation of `input` (`channels` planes of side `p`, followed by at least
/// [`input_reach`] values in all) with `taps`, on the wide grid into `wide`
/// ([`wide_len`] values).
fn correlate(input: &[f32], planes: (usize, usize), taps: &Taps, wide: &mut [f32]) {
    assert!(
        planes.0 == taps.inputs && input.len() >= input_reach(taps, planes) && wide.len() == wide_len(taps, planes.1),
        "correlate: buffer sizes do not match"
    );
    let (k, narrow) = (&taps.values, taps.tile.0 == 1);
    // SAFETY (each arm): the sizes are checked above and again by the kernel, whose tile
    // is the one `Taps::new` laid the kernel out for; `Isa::best` chose AVX-512 and AVX2
    // only where the CPU has them, and scalar code runs anywhere.
    match (taps.isa, narrow) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, false) => unsafe { x86::correlate_avx512::<8, 3>(input, planes, k, wide) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, true) => unsafe { x86::correlate_avx512::<1, 8>(input, planes, k, wide) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, false) => unsafe { x86::correlate_avx2::<4, 2>(input, planes, k, wide) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, true) => unsafe { x86::correlate_avx2::<1, 8>(input, planes, k, wide) },
        (_, false) => unsafe { correlate_with::<Scalar, 4, 4>(input, planes, k, wide) },
        (_, true) => unsafe { correlate_with::<Scalar, 1, 8>(input, planes, k, wide) },
    }
}

/// [`correlate`] with `MR` output channels × `NV` vectors of pixels per tile.
///
/// # Safety
/// The CPU must have `S`'s instruction set; the sizes are asserted.
#[inline(always)]
unsafe fn correlate_with<S: Simd, const MR: usize, const NV: usize>(
    input: &[f32],
    (channels, p): (usize, usize),
    taps: &[f32],
    wide: &mut [f32],
) {
    let step = NV * S::LANES;
    let row_len = ((p + 1 - KERNEL) * p).next_multiple_of(step);
    let blocks = taps.len() / (MR * channels * TAPS);
    assert!(
        taps.len() == blocks * MR * channels * TAPS
            && wide.len() == blocks * MR * row_len
            && input.len() >= (channels - 1) * p * p + row_len + (KERNEL - 1) * (p + 1),
        "correlate: buffer sizes do not match"
    );
    let (x, w, out) = (input.as_ptr(), taps.as_ptr(), wide.as_mut_ptr());
    for block in 0..blocks {
        for q0 in (0..row_len).step_by(step) {
            let mut acc = [[unsafe { S::zero() }; NV]; MR];
            for c in 0..channels {
                // SAFETY (every pointer below): the reads end before `input_reach` and
                // the tap at `taps.len()`, the writes at `wide.len()`, as asserted.
                let wc = unsafe { w.add((block * channels + c) * TAPS * MR) };
                for i in 0..KERNEL {
                    let row = unsafe { x.add(c * p * p + i * p + q0) };
                    for j in 0..KERNEL {
                        let v: [S::V; NV] = std::array::from_fn(|v| unsafe { S::load(row.add(j + v * S::LANES)) });
                        for (m, acc) in acc.iter_mut().enumerate() {
                            let weight = unsafe { S::splat(wc.add((i * KERNEL + j) * MR + m)) };
                            for (acc, v) in acc.iter_mut().zip(v) {
                                *acc = unsafe { S::mul_add(weight, v, *acc) };
                            }
                        }
                    }
                }
            }
            for (m, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    unsafe { S::store(out.add((block * MR + m) * row_len + q0 + v * S::LANES), *acc) };
                }
            }
        }
    }
}

/// Adds `Σ_(y,x) first[f, y, x] · second[s, y + i, x + j]` into `acc[(s, i, j)][f]` for
/// one image: `first_t` holds `first` transposed, `[y, x][f]` with `f` padded to a
/// multiple of [`Isa::tap_sums_rows`], `second` the `planes.0` planes of side `planes.1`.
fn tap_sums(isa: Isa, first_t: &[f32], second: &[f32], planes: (usize, usize), acc: &mut [f32]) {
    let (channels, p) = planes;
    let side = p + 1 - KERNEL;
    let rows = acc.len() / (channels * TAPS);
    assert!(
        rows.is_multiple_of(isa.tap_sums_rows())
            && acc.len() == channels * TAPS * rows
            && first_t.len() == side * side * rows
            && second.len() >= channels * p * p,
        "tap_sums: buffer sizes do not match"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the sizes are checked above (and again by the kernel); `Isa::best` chose
        // AVX-512 only where the CPU has it.
        Isa::Avx512 => unsafe { x86::tap_sums_avx512(first_t, second, planes, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::tap_sums_avx2(first_t, second, planes, acc) },
        // SAFETY: the sizes are checked above; scalar code runs anywhere.
        _ => unsafe { tap_sums_with::<Scalar, 4, 1>(first_t, second, planes, acc) },
    }
}

/// [`tap_sums`] with `FV` vectors of `first`'s rows × the taps of `TR` rows of the kernel
/// of one channel of `second` per tile.
///
/// # Safety
/// The CPU must have `S`'s instruction set; the sizes are asserted.
#[inline(always)]
unsafe fn tap_sums_with<S: Simd, const FV: usize, const TR: usize>(
    first_t: &[f32],
    second: &[f32],
    (channels, p): (usize, usize),
    acc: &mut [f32],
) {
    let side = p + 1 - KERNEL;
    let block = FV * S::LANES;
    let rows = acc.len() / (channels * TAPS);
    assert!(
        KERNEL.is_multiple_of(TR)
            && rows.is_multiple_of(block)
            && acc.len() == channels * TAPS * rows
            && first_t.len() == side * side * rows
            && second.len() >= channels * p * p,
        "tap_sums: buffer sizes do not match"
    );
    for fb in 0..rows / block {
        for (c, i0) in (0..channels).flat_map(|c| (0..KERNEL).step_by(TR).map(move |i0| (c, i0))) {
            let mut sums = [[[unsafe { S::zero() }; KERNEL]; TR]; FV];
            // SAFETY (every pointer below): the last read of `second` is at
            // `channels·p² − 1`, of `first_t` at its end, the writes inside `acc`.
            let mut g = unsafe { first_t.as_ptr().add(fb * block) };
            for y in 0..side {
                let rows_at: [*const f32; TR] =
                    std::array::from_fn(|i| unsafe { second.as_ptr().add(c * p * p + (y + i0 + i) * p) });
                for x in 0..side {
                    let f: [S::V; FV] = std::array::from_fn(|v| unsafe { S::load(g.add(v * S::LANES)) });
                    for (i, row) in rows_at.iter().enumerate() {
                        for j in 0..KERNEL {
                            let s = unsafe { S::splat(row.add(x + j)) };
                            for (sums, f) in sums.iter_mut().zip(f) {
                                sums[i][j] = unsafe { S::mul_add(f, s, sums[i][j]) };
                            }
                        }
                    }
                    g = unsafe { g.add(rows) };
                }
            }
            for (v, sums) in sums.iter().enumerate() {
                for (i, sums) in sums.iter().enumerate() {
                    for (j, sum) in sums.iter().enumerate() {
                        let at = (c * TAPS + (i0 + i) * KERNEL + j) * rows + fb * block + v * S::LANES;
                        unsafe { S::add_store(acc.as_mut_ptr().add(at), *sum) };
                    }
                }
            }
        }
    }
}

/// Per-thread room for one image's padded input and wide output.
#[derive(Default)]
struct Scratch {
    input: Vec<f32>,
    wide: Vec<f32>,
}

/// What [`correlate_batch`] does to each value as it copies it out of the wide grid.
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    /// Adds the output channel's bias, then applies a ReLU if `relu`.
    Bias { bias: &'a [f32], relu: bool },
    /// Zeroes the value wherever this ReLU output, laid out as the result, is not
    /// positive: the ReLU's share of a gradient.
    Mask(&'a [f32]),
}

/// The correlation of every image of `x` (`channels` planes of side `side`, zero-padded
/// by `pad` on each side) with `taps` into `out`, finished by `epilogue`; the images are
/// spread over the cores.
fn correlate_batch(
    x: &[f32],
    (channels, side, pad): (usize, usize, usize),
    taps: &Taps,
    out: &mut [f32],
    epilogue: Epilogue,
) {
    let p = side + 2 * pad;
    let side_out = p + 1 - KERNEL;
    let (image_in, image_out) = (channels * side * side, taps.outputs * side_out * side_out);
    let reach = input_reach(taps, (channels, p));
    out.par_chunks_mut(image_out).enumerate().for_each_init(Scratch::default, |s, (n, out)| {
        // Unpadded images are read in place, the wide grid's last tile reaching into the
        // next image; the batch's last image, and padded ones, are copied (the zeros
        // around them written once per buffer: every image rewrites the same values).
        let input = if pad == 0 && x.len() >= n * image_in + reach {
            &x[n * image_in..]
        } else {
            if s.input.len() != channels * p * p + reach {
                s.input.clear();
                s.input.resize(channels * p * p + reach, 0.0);
            }
            for (plane, src) in
                s.input.chunks_exact_mut(p * p).zip(x[n * image_in..][..image_in].chunks_exact(side * side))
            {
                for (row, src) in plane[pad * p..].chunks_exact_mut(p).zip(src.chunks_exact(side)) {
                    row[pad..pad + side].copy_from_slice(src);
                }
            }
            &s.input[..]
        };
        s.wide.resize(wide_len(taps, p), 0.0);
        correlate(input, (channels, p), taps, &mut s.wide);
        let row_len = wide_row_len(taps, p);
        for (o, plane) in out.chunks_exact_mut(side_out * side_out).enumerate() {
            for (y, row) in plane.chunks_exact_mut(side_out).enumerate() {
                let wide = &s.wide[o * row_len + y * p..][..side_out];
                match epilogue {
                    Epilogue::Bias { bias, relu } => {
                        for (v, w) in row.iter_mut().zip(wide) {
                            *v = bias_relu(*w, bias[o], relu);
                        }
                    }
                    Epilogue::Mask(act) => {
                        let act = &act[n * image_out + (o * side_out + y) * side_out..][..side_out];
                        for ((v, w), a) in row.iter_mut().zip(wide).zip(act) {
                            *v = relu_gate(*w, *a);
                        }
                    }
                }
            }
        }
    });
}

/// `dw[f, s, i, j] = Σ_images Σ_(y,x) first[f, y, x] · second[s, y + i, x + j]` for
/// `first` with `planes.0` planes and `second` with `planes.1` of side `side`, per image;
/// each core sums a contiguous run of the images, the runs are added at the end.
fn tap_sums_batch(isa: Isa, first: &[f32], second: &[f32], planes: (usize, usize), side: usize, dw: &mut [f32]) {
    let (f, s) = planes;
    let side_out = side + 1 - KERNEL;
    let (first_len, second_len) = (f * side_out * side_out, s * side * side);
    let images = second.len() / second_len;
    let rows = f.next_multiple_of(isa.tap_sums_rows());
    let partials = over_image_runs(images, |run| {
        let mut acc = vec![0.0; s * TAPS * rows];
        let mut first_t = vec![0.0; side_out * side_out * rows];
        for n in run {
            transpose_planes(isa, &first[n * first_len..][..first_len], side_out * side_out, rows, &mut first_t);
            tap_sums(isa, &first_t, &second[n * second_len..][..second_len], (s, side), &mut acc);
        }
        acc
    });
    dw.fill(0.0);
    for acc in partials {
        for (n, sums) in acc.chunks_exact(rows).enumerate() {
            for (row, sum) in sums[..f].iter().enumerate() {
                dw[row * s * TAPS + n] += sum;
            }
        }
    }
}

/// `dst[q · rows + c] = src[c · positions + q]`: the planes of `src`, `positions` values
/// each, transposed into rows of `rows` values (the rest of each row left as it is). On
/// AVX-512 16 planes × 16 positions go through registers at a time: value by value, the
/// transposition of a batch-128 gradient of 32 planes of 24 × 24 took 0.98 ms of its
/// weight gradient's 4.05 ms on an AMD EPYC Zen 4, and the backward passes of the four
/// convolutions are 0.3–0.6 ms shorter each this way (BENCHMARKS.md 2026-12-07).
fn transpose_planes(isa: Isa, src: &[f32], positions: usize, rows: usize, dst: &mut [f32]) {
    let planes = src.len() / positions;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        done = planes / 16 * 16;
        // SAFETY: `Isa::best` chose AVX-512 only where the CPU has it; the kernel asserts
        // the sizes.
        unsafe { x86::transpose_planes_avx512(&src[..done * positions], positions, rows, dst) };
    }
    for (c, plane) in src.chunks_exact(positions).enumerate().skip(done) {
        for (dst, v) in dst[c..].iter_mut().step_by(rows).zip(plane) {
            *dst = *v;
        }
    }
}

/// Convolution `layer` (and its ReLU) on a batch `x` of input images, into `out`.
pub(super) fn conv_forward(layer: &Layer, x: &[f32], p: Params, out: &mut [f32]) {
    let (c, o) = (layer.inputs, layer.outputs);
    let taps = Taps::new(Isa::best(), (o, c), |o, i, tap| p.weight[(o * c + i) * TAPS + tap]);
    correlate_batch(x, (c, layer.side, 0), &taps, out, Epilogue::Bias { bias: p.bias, relu: layer.relu });
}

/// Gradients of a [`conv_forward`] layer from `g`, the gradient of its output (already
/// masked by the ReLU), and its input `x`: weight and bias into `grads`, and if `g_in` is
/// given the gradient with respect to the input before the ReLU that produced `x` (the
/// correlation of `g`, zero-padded, with the flipped kernel, zeroed where `x` is not
/// positive).
pub(super) fn conv_backward(
    layer: &Layer,
    g: &[f32],
    x: &[f32],
    weight: &[f32],
    grads: &mut Grads,
    g_in: Option<&mut [f32]>,
) {
    let (isa, c, o, side_out) = (Isa::best(), layer.inputs, layer.outputs, layer.output_side());
    tap_sums_batch(isa, g, x, (o, c), layer.side, &mut grads.weight);
    channel_sums(g, o, side_out * side_out, &mut grads.bias);
    if let Some(g_in) = g_in {
        let taps = Taps::new(isa, (c, o), |i, o, tap| weight[(o * c + i) * TAPS + TAPS - 1 - tap]);
        correlate_batch(g, (o, side_out, KERNEL - 1), &taps, g_in, Epilogue::Mask(x));
    }
}

/// Transposed convolution `layer` (and its ReLU, if any) on a batch `x` of input images:
/// the correlation of `x`, zero-padded, with the flipped kernel (its weight is
/// `(inputs, outputs, k, k)`).
pub(super) fn deconv_forward(layer: &Layer, x: &[f32], p: Params, out: &mut [f32]) {
    let (c, o) = (layer.inputs, layer.outputs);
    let taps = Taps::new(Isa::best(), (o, c), |o_, i, tap| p.weight[(i * o + o_) * TAPS + TAPS - 1 - tap]);
    correlate_batch(x, (c, layer.side, KERNEL - 1), &taps, out, Epilogue::Bias { bias: p.bias, relu: layer.relu });
}

/// Gradients of a [`deconv_forward`] layer from `g`, the gradient of its output, and its
/// input `x`, a ReLU's output: weight and bias into `grads`, the gradient with respect to
/// the input before that ReLU (the valid correlation of `g` with the kernel, zeroed where
/// `x` is not positive) into `g_in`.
pub(super) fn deconv_backward(
    layer: &Layer,
    g: &[f32],
    x: &[f32],
    weight: &[f32],
    grads: &mut Grads,
    g_in: &mut [f32],
) {
    let (isa, c, o, side_out) = (Isa::best(), layer.inputs, layer.outputs, layer.output_side());
    tap_sums_batch(isa, x, g, (c, o), side_out, &mut grads.weight);
    channel_sums(g, o, side_out * side_out, &mut grads.bias);
    let taps = Taps::new(isa, (c, o), |i, o_, tap| weight[(i * o + o_) * TAPS + tap]);
    correlate_batch(g, (o, side_out, 0), &taps, g_in, Epilogue::Mask(x));
}

/// `sums[c] = Σ_b Σ_p g[b, c, p]` for `g` `(b, channels, plane)`.
fn channel_sums(g: &[f32], channels: usize, plane: usize, sums: &mut [f32]) {
    let partials = over_image_runs(g.len() / (channels * plane), |run| {
        let mut sums = vec![0.0f32; channels];
        for image in g[run.start * channels * plane..run.end * channels * plane].chunks_exact(channels * plane) {
            for (sum, plane) in sums.iter_mut().zip(image.chunks_exact(plane)) {
                *sum += plane.iter().sum::<f32>();
            }
        }
        sums
    });
    sums.fill(0.0);
    for partial in partials {
        for (sum, v) in sums.iter_mut().zip(partial) {
            *sum += v;
        }
    }
}

/// `f` on contiguous runs of the images `0..images`, one run per core, in order: the
/// runs, and so the order of every sum, depend only on the number of images and cores.
fn over_image_runs<T: Send>(images: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let workers = rayon::current_num_threads().min(images).max(1);
    let per_worker = images.div_ceil(workers);
    (0..workers).into_par_iter().map(|w| f(w * per_worker..((w + 1) * per_worker).min(images))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{im2col, layers::col2im_add};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 - 0.5)
            .collect()
    }

    /// Every instruction set's correlation, unpadded and padded, matches im2col's
    /// product and col2im's adjoint computed in f64, on shapes whose channels and sides
    /// leave partial tiles.
    #[test]
    fn correlations_match_im2col() {
        for isa in Isa::available() {
            for (outputs, inputs, side, images) in [(5, 3, 9, 3), (16, 1, 28, 2), (32, 16, 7, 2)] {
                let k = values(outputs * inputs * TAPS, 1);
                let x = values(images * inputs * side * side, 2);
                let taps = Taps::new(isa, (outputs, inputs), |o, c, t| k[(o * inputs + c) * TAPS + t]);
                let so = side + 1 - KERNEL;
                let mut out = vec![0.0; images * outputs * so * so];
                let bias = vec![0.0; outputs];
                correlate_batch(&x, (inputs, side, 0), &taps, &mut out, Epilogue::Bias { bias: &bias, relu: false });
                let mut cols = vec![0.0; inputs * TAPS * so * so];
                for (img, out) in x.chunks(inputs * side * side).zip(out.chunks(outputs * so * so)) {
                    im2col(img, (inputs, side, side), KERNEL, &mut cols);
                    for (o, plane) in out.chunks(so * so).enumerate() {
                        for (q, v) in plane.iter().enumerate() {
                            let want: f64 = (0..inputs * TAPS)
                                .map(|r| f64::from(k[o * inputs * TAPS + r]) * f64::from(cols[r * so * so + q]))
                                .sum();
                            assert!(
                                (f64::from(*v) - want).abs() < 1e-5,
                                "{isa:?} valid {outputs}x{inputs}x{side}: {v} vs {want}"
                            );
                        }
                    }
                }
                // The transposed direction: `x` as `outputs`-channel images of side `so`,
                // zero-padded and correlated with the flipped, transposed kernel, is the
                // adjoint of the correlation above.
                let g = values(images * outputs * so * so, 3);
                let flipped = Taps::new(isa, (inputs, outputs), |c, o, t| k[(o * inputs + c) * TAPS + TAPS - 1 - t]);
                let mut back = vec![0.0; images * inputs * side * side];
                let bias = vec![0.0; inputs];
                correlate_batch(
                    &g,
                    (outputs, so, KERNEL - 1),
                    &flipped,
                    &mut back,
                    Epilogue::Bias { bias: &bias, relu: false },
                );
                for (g, back) in g.chunks(outputs * so * so).zip(back.chunks(inputs * side * side)) {
                    let mut dcols = vec![0.0; inputs * TAPS * so * so];
                    for (r, row) in dcols.chunks_mut(so * so).enumerate() {
                        for (q, v) in row.iter_mut().enumerate() {
                            *v = (0..outputs)
                                .map(|o| f64::from(k[o * inputs * TAPS + r]) * f64::from(g[o * so * so + q]))
                                .sum::<f64>() as f32;
                        }
                    }
                    let mut want = vec![0.0; inputs * side * side];
                    col2im_add(&dcols, (inputs, side, side), KERNEL, &mut want);
                    for (v, w) in back.iter().zip(&want) {
                        assert!((v - w).abs() < 1e-5, "{isa:?} transposed {outputs}x{inputs}x{side}: {v} vs {w}");
                    }
                }
            }
        }
    }

    /// Every instruction set's weight gradient matches the sum of im2col products over
    /// the images, computed in f64.
    #[test]
    fn tap_sums_match_im2col() {
        for isa in Isa::available() {
            for (f, s, side, images) in [(5, 3, 9, 3), (16, 1, 28, 2), (32, 16, 7, 5)] {
                let so = side + 1 - KERNEL;
                let (first, second) = (values(images * f * so * so, 4), values(images * s * side * side, 5));
                let mut dw = vec![0.0; f * s * TAPS];
                tap_sums_batch(isa, &first, &second, (f, s), side, &mut dw);
                let mut want = vec![0.0f64; f * s * TAPS];
                let mut cols = vec![0.0; s * TAPS * so * so];
                for (first, second) in first.chunks(f * so * so).zip(second.chunks(s * side * side)) {
                    im2col(second, (s, side, side), KERNEL, &mut cols);
                    for (i, w) in want.iter_mut().enumerate() {
                        let (row, r) = (i / (s * TAPS), i % (s * TAPS));
                        *w += (0..so * so)
                            .map(|q| f64::from(first[row * so * so + q]) * f64::from(cols[r * so * so + q]))
                            .sum::<f64>();
                    }
                }
                for (v, w) in dw.iter().zip(&want) {
                    assert!((f64::from(*v) - w).abs() < 1e-4, "{isa:?} {f}x{s}x{side}: {v} vs {w}");
                }
            }
        }
    }
}
