//! The encoder's wide layer at inference on its sparse input, value by value.
//!
//! The second convolution's ReLU leaves most of its 18432 outputs zero in each image (81 %
//! after one epoch of training), far more than the share that is zero in every image of a
//! batch ([`super::live`]). A dense product spends its arithmetic on those zeros; here each
//! row of the output is `bias + Σ_k x[k] · Wᵀ[k]` over the non-zero `x[k]` of its input
//! row only. The transposed weight is packed in panels one tile of output columns wide
//! and read in blocks of [`BLOCK_BYTES`] that stay in the core's L2 cache while every
//! row adds its terms from that block, the row's tile of the output in registers. The
//! sums run over `k` in ascending order, so the result depends only on the values, not
//! on the number of cores. Each term loads its weights from L2, not from registers as a
//! dense product's do, so the arithmetic runs well below the FMA peak (on a Zen 4 about a
//! third of it): it pays where fewer than [`MAX_DENSITY`] of the inputs are non-zero.

use rayon::prelude::*;

use super::Params;
use super::simd::{Isa, Scalar, Simd};
use crate::Layer;

/// Bytes of the transposed weight's rows (one tile wide) that one block spans: small
/// enough to stay in a core's L2 cache (512 KB and more on the CPUs we run on) beside the
/// tile of the output.
const BLOCK_BYTES: usize = 1 << 18;

/// Output columns a tile of `isa` keeps in registers: 8 vectors (AVX2 has 16 registers,
/// and the multiplier needs one; with AVX-512, 16 vectors were no faster on a Zen 4).
fn tile_columns(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 8 * 16,
        Isa::Avx2 => 8 * 8,
        Isa::Scalar => 4,
    }
}

/// The panels' first row starts on a cache line (of [`ALIGN_BYTES`]), and so does every
/// row of a full tile: a vector load across two lines costs twice.
const ALIGN_BYTES: usize = 64;

/// [`ALIGN_BYTES`] in f32 values: the room the alignment may take.
const ALIGN_VALUES: usize = ALIGN_BYTES / 4;

/// The most non-zero inputs, as a share `(numerator, denominator)` of all the inputs,
/// for which [`SparseInput::forward`] runs. On an AMD EPYC Zen 4 (AVX-512) at 19 %
/// non-zero (a model after two epochs, 500 images) the layer took 36–40 ms this way
/// against 46–52 ms on the live features ([`super::live`]), the products 22 ms of it and
/// the transpose of the weight 9 ms (a call whose weight is unchanged compares it
/// instead, in about 2 ms); with the products' time growing with the share, the
/// break-even lies near 25 % (30 % where the transpose is kept).
const MAX_DENSITY: (usize, usize) = (1, 4);

/// The transposed weight of a narrowing layer and the non-zero values of its input, for
/// [`SparseInput::forward`].
#[derive(Default)]
pub(super) struct SparseInput {
    /// `Wᵀ`, `inputs × outputs`, in panels of [`tile_columns`] columns (the last one
    /// narrower if they do not divide the outputs), each row-major `inputs × width`.
    panels: Vec<f32>,
    /// The layer's `(outputs, inputs)` and the panels' width, of the weight in `panels`.
    packed: Option<(usize, usize, usize)>,
    /// The weight in `panels`, as it was given: a call with the same values reuses them.
    weight: Vec<f32>,
    /// The positions of the input's non-zero values, row after row.
    index: Vec<u32>,
    /// The input's non-zero values, in the order of `index`.
    value: Vec<f32>,
    /// Where each row's values end in `index` and `value`.
    row_end: Vec<usize>,
}

#[cfg(test)]
impl SparseInput {
    /// Whether [`SparseInput::forward`] has run its products.
    pub(super) fn has_run(&self) -> bool {
        !self.row_end.is_empty()
    }
}

impl SparseInput {
    /// `panels` = the transpose of `weight` (row-major `outputs × inputs`) in panels of
    /// `tile` columns.
    fn pack(&mut self, weight: &[f32], (outputs, inputs): (usize, usize), tile: usize) {
        const INPUTS_PER_TASK: usize = 64;
        self.panels.resize(weight.len() + ALIGN_VALUES, 0.0);
        let mut panels = Vec::new();
        let start = self.panels.as_ptr().align_offset(ALIGN_BYTES);
        let mut rest = &mut self.panels[start..start + weight.len()];
        for first in (0..outputs).step_by(tile) {
            let width = tile.min(outputs - first);
            let (panel, tail) = std::mem::take(&mut rest).split_at_mut(width * inputs);
            rest = tail;
            panels.extend(panel.chunks_mut(INPUTS_PER_TASK * width).enumerate().map(|(i, dst)| (first, width, i, dst)));
        }
        panels.into_par_iter().for_each(|(first, width, i, dst)| {
            let k0 = i * INPUTS_PER_TASK;
            for o in 0..width {
                let src = &weight[(first + o) * inputs + k0..][..dst.len() / width];
                for (v, dst) in src.iter().zip(dst[o..].iter_mut().step_by(width)) {
                    *dst = *v;
                }
            }
        });
    }

    /// `out = x Wᵀ + bias` for the `b` rows of `x` of the narrowing `layer`, then its ReLU,
    /// summing over the non-zero values of `x` only. The weight is transposed unless the
    /// last call's had the same bits (an encoder's chunks, an evaluation's batches: the
    /// comparison reads both copies once, half the transpose's traffic). Returns false,
    /// leaving `out` alone, where more than [`MAX_DENSITY`] of `x` is non-zero.
    pub(super) fn forward(&mut self, layer: &Layer, x: &[f32], p: Params, out: &mut [f32], b: usize) -> bool {
        self.forward_with(Isa::best(), layer, x, p, (out, b))
    }

    /// [`SparseInput::forward`] with the kernels of `isa`, which the CPU must have.
    fn forward_with(&mut self, isa: Isa, layer: &Layer, x: &[f32], p: Params, (out, b): (&mut [f32], usize)) -> bool {
        let (outputs, inputs) = (layer.outputs, layer.inputs);
        assert!(
            x.len() == b * inputs && out.len() == b * outputs && p.weight.len() == outputs * inputs,
            "sparse: shapes"
        );
        let counts: Vec<usize> = x.par_chunks(inputs).map(|row| row.iter().filter(|v| **v != 0.0).count()).collect();
        if counts.iter().sum::<usize>() * MAX_DENSITY.1 > x.len() * MAX_DENSITY.0 {
            return false;
        }
        let tile = tile_columns(isa);
        if self.packed != Some((outputs, inputs, tile)) || !same_bits(&self.weight, p.weight) {
            self.pack(p.weight, (outputs, inputs), tile);
            self.weight.clear();
            self.weight.extend_from_slice(p.weight);
            self.packed = Some((outputs, inputs, tile));
        }
        self.gather(x, inputs, &counts);
        out.par_chunks_mut(outputs).for_each(|row| row.copy_from_slice(p.bias));
        let (tiles, tail) = (outputs / tile, outputs / tile * tile);
        let rows = Rows { index: &self.index, value: &self.value, end: &self.row_end };
        let start = self.panels.as_ptr().align_offset(ALIGN_BYTES);
        let (panels, out_ptr) = (&self.panels[start..start + outputs * inputs], super::SharedMut(out.as_mut_ptr()));
        (0..tiles + outputs - tail).into_par_iter().for_each(|t| {
            // SAFETY: task `t` writes its own columns of each of the `b` rows of `out`
            // (those of tile `t`, or column `tail + t - tiles` past the tiles), inside
            // `out`'s `b × outputs` values, which the call borrows mutably; each panel
            // holds `inputs` rows and every index is below `inputs`; the caller promised
            // `isa`.
            unsafe {
                if t < tiles {
                    let panel = &panels[t * tile * inputs..][..tile * inputs];
                    run_tile(isa, rows, (panel, tile, 0), (out_ptr.at(t * tile), outputs));
                } else {
                    let (panel, column) = (&panels[tail * inputs..], t - tiles);
                    tile_sums::<Scalar, 1>(rows, (panel, outputs - tail, column), (out_ptr.at(tail + column), outputs));
                }
            }
        });
        if layer.relu {
            out.par_chunks_mut(outputs).for_each(|row| row.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        true
    }

    /// Collects the non-zero values of `x` (rows of `inputs`), `counts` of them in each row.
    fn gather(&mut self, x: &[f32], inputs: usize, counts: &[usize]) {
        self.row_end.clear();
        self.row_end.extend(counts.iter().scan(0, |end, count| {
            *end += count;
            Some(*end)
        }));
        let total = self.row_end.last().copied().unwrap_or(0);
        self.index.resize(total, 0);
        self.value.resize(total, 0.0);
        let (mut index, mut value) = (&mut self.index[..], &mut self.value[..]);
        let mut parts = Vec::with_capacity(counts.len());
        for count in counts {
            let (row_index, rest_index) = std::mem::take(&mut index).split_at_mut(*count);
            let (row_value, rest_value) = std::mem::take(&mut value).split_at_mut(*count);
            (index, value) = (rest_index, rest_value);
            parts.push((row_index, row_value));
        }
        parts.into_par_iter().zip(x.par_chunks(inputs)).for_each(|((index, value), row)| {
            let non_zero = row.iter().enumerate().filter(|(_, v)| **v != 0.0);
            for ((index, value), (k, v)) in index.iter_mut().zip(value.iter_mut()).zip(non_zero) {
                (*index, *value) = (k as u32, *v);
            }
        });
    }
}

/// Whether `a` and `b` hold the same values bit for bit.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    const CHUNK: usize = 1 << 16;
    a.len() == b.len()
        && a.par_chunks(CHUNK)
            .zip(b.par_chunks(CHUNK))
            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

/// The non-zero values of the input rows, as [`SparseInput`] keeps them.
#[derive(Clone, Copy)]
struct Rows<'a> {
    index: &'a [u32],
    value: &'a [f32],
    end: &'a [usize],
}

/// Adds every row's terms to the [`tile_columns`] output columns of `isa` from `out.0` on
/// (rows of `out.1` values), from the columns `weight.2..` of the panel `weight.0` of the
/// transposed weight, whose rows are `weight.1` wide.
///
/// # Safety
/// `out` must be valid for the tile's columns of `rows.end.len()` rows of `out.1` values,
/// which no other thread touches, the panel must hold a row for every index in `rows`,
/// and the CPU must have `isa`.
unsafe fn run_tile(isa: Isa, rows: Rows, weight: (&[f32], usize, usize), out: (*mut f32, usize)) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::x86::{Avx2, Avx512};

        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(rows: Rows, weight: (&[f32], usize, usize), out: (*mut f32, usize)) {
            unsafe { tile_sums::<Avx512, 8>(rows, weight, out) }
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(rows: Rows, weight: (&[f32], usize, usize), out: (*mut f32, usize)) {
            unsafe { tile_sums::<Avx2, 8>(rows, weight, out) }
        }

        // SAFETY: the caller's contract.
        match isa {
            Isa::Avx512 => return unsafe { avx512(rows, weight, out) },
            Isa::Avx2 => return unsafe { avx2(rows, weight, out) },
            Isa::Scalar => {}
        }
    }
    // SAFETY: the caller's contract.
    unsafe { tile_sums::<Scalar, 4>(rows, weight, out) }
}

/// [`run_tile`] with `V` vectors of `S`, from column `weight.2` of the panel `weight.0`,
/// whose rows are `weight.1` wide: block by block of the panel's rows, every output row's
/// tile is loaded, added the terms of its non-zero inputs in the block, and stored.
///
/// # Safety
/// As [`run_tile`], for `V · S::LANES` columns.
#[inline(always)]
unsafe fn tile_sums<S: Simd, const V: usize>(
    rows: Rows,
    (panel, width, column): (&[f32], usize, usize),
    (out, out_width): (*mut f32, usize),
) {
    let block = (BLOCK_BYTES / (4 * V * S::LANES)).max(1);
    let inputs = panel.len() / width;
    let mut cursor: Vec<usize> = std::iter::once(0).chain(rows.end.iter().copied()).take(rows.end.len()).collect();
    let weight = panel.as_ptr();
    for block_end in (block..inputs + block).step_by(block) {
        for (r, (cursor, end)) in cursor.iter_mut().zip(rows.end).enumerate() {
            let start = *cursor;
            let mut stop = start;
            while stop < *end && (rows.index[stop] as usize) < block_end {
                stop += 1;
            }
            *cursor = stop;
            if stop == start {
                continue;
            }
            // SAFETY: row `r`'s tile lies inside `out`, and every index inside the panel
            // (the caller's contract).
            unsafe {
                let dst = out.add(r * out_width);
                let mut acc = [S::zero(); V];
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = S::load(dst.add(j * S::LANES));
                }
                for (k, v) in rows.index[start..stop].iter().zip(&rows.value[start..stop]) {
                    let x = S::splat(v);
                    let w = weight.add(*k as usize * width + column);
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = S::mul_add(x, S::load(w.add(j * S::LANES)), *acc);
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    S::store(dst.add(j * S::LANES), *acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerKind;

    /// Every instruction set's kernel gives the dense product (in f64) on sparse
    /// activations, with a ReLU and output columns past the last full tile, twice with the
    /// same weight (the second time from the kept transpose) and once more after one
    /// weight changed.
    #[test]
    fn sparse_forward_matches_dense_product() {
        let (b, inputs, outputs) = (7, 701, 300);
        let value = |i: usize| ((i * 7919 % 101) as f32 - 50.0) / 25.0;
        let x: Vec<f32> = (0..b * inputs).map(|i| if i % 5 == 0 { value(i) } else { 0.0 }).collect();
        let mut weight: Vec<f32> = (0..outputs * inputs).map(|i| value(i + 3)).collect();
        let bias: Vec<f32> = (0..outputs).map(|i| value(i + 11)).collect();
        let dense = |weight: &[f32]| -> Vec<f32> {
            (0..b * outputs)
                .map(|i| {
                    let (r, o) = (i / outputs, i % outputs);
                    let dot: f64 =
                        (0..inputs).map(|k| f64::from(x[r * inputs + k]) * f64::from(weight[o * inputs + k])).sum();
                    (dot + f64::from(bias[o])).max(0.0) as f32
                })
                .collect()
        };
        let layer = Layer { name: "test", kind: LayerKind::Linear, inputs, outputs, side: 1, relu: true };
        let (mut sparse, mut previous) = (SparseInput::default(), Vec::new());
        for (isa, change) in Isa::available().into_iter().flat_map(|isa| [(isa, false), (isa, false), (isa, true)]) {
            if change {
                weight[5 * inputs] += 1.0;
            }
            let (want, p) = (dense(&weight), Params { weight: &weight, bias: &bias });
            assert_eq!(change, !previous.is_empty() && want != previous, "the change shows in the output");
            previous.clone_from(&want);
            let mut out = vec![f32::NAN; b * outputs];
            assert!(sparse.forward_with(isa, &layer, &x, p, (&mut out, b)));
            for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{isa:?} [{i}]: {got} against {want}");
            }
            assert!(want.contains(&0.0) && want.iter().any(|v| *v > 0.0));
        }
        let (mut out, p) = (vec![f32::NAN; b * outputs], Params { weight: &weight, bias: &bias });
        let dense_input = vec![1.0; b * inputs];
        assert!(!sparse.forward(&layer, &dense_input, p, &mut out, b), "a dense input is left to the dense product");
    }
}
