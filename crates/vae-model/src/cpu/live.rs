//! The wide layers' f32 products restricted to the features a ReLU left alive in the batch.
//!
//! Around each of the two wide layers sits a ReLU over 18432 features: the second
//! convolution's output, which the encoder's first fully-connected layer reads, and the
//! decoder's last fully-connected layer's own output. Many of those features are zero for
//! every image of a batch (after one epoch of training about 30 % and 53 % of them at batch
//! 128: in the encoder whole channels and more often near the image's edges, in the
//! decoder all over the map). Such a feature adds nothing to the products that read it,
//! and its gradient is zero in those that write it, so the products run on the live
//! features only, gathered into contiguous operands, and the results are scattered back,
//! with exact zeros for the dead features. The sums are the same terms without the zero
//! ones; only the grouping of their rounding can differ from the dense product.

use rayon::prelude::*;

use super::kernels::{linear_backward, linear_forward};
use super::{Grads, Params};
use crate::Layer;

/// When the products run on the live features only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Restrict {
    /// Never (bf16, a layer without a ReLU).
    Never,
    /// When enough features are dead for it to pay ([`Side::min_dead_share`]).
    #[default]
    WhenItPays,
    /// Whenever a feature is dead and one is live (for the tests of the restricted path).
    #[cfg(test)]
    Always,
}

/// Which side of a wide layer the features are on.
#[derive(Clone, Copy)]
pub(super) enum Side {
    /// Its input (a narrowing layer, 18432 → 512): the weight's live columns are gathered
    /// once for its forward pass and both gradients.
    Input,
    /// Its output (a widening layer, 512 → 18432): the weight's live rows are gathered and
    /// the weight gradient's rows scattered for its two gradient products only.
    Output,
}

impl Side {
    /// The share of dead features, `(numerator, denominator)`, from which the restricted
    /// products pay for gathering and scattering: with fewer rows (a smaller batch) the
    /// products save less against the same weight traffic. Measured on an AMD EPYC Zen 1
    /// (BENCHMARKS.md, 2026-12-06), where the gathers cost 5–15 ms a layer: the break-even
    /// lay near 10 % and 28 % dead for the encoder's wide layer at batch 128 and 32, near
    /// 20 % and 36 % for the decoder's.
    fn min_dead_share(self, rows: usize) -> (usize, usize) {
        match (self, rows >= 64) {
            (Self::Input, true) => (1, 8),
            (Self::Input, false) => (1, 3),
            (Self::Output, true) => (1, 4),
            (Self::Output, false) => (2, 5),
        }
    }
}

/// Marks a dead feature in [`LiveFeatures::slot`].
const DEAD: u32 = u32::MAX;

/// Values below which a gather or scatter stays on one core.
const PARALLEL_VALUES: usize = 1 << 14;

/// The features of one ReLU output that are non-zero in at least one row of the batch, and
/// the buffers of the products restricted to them.
#[derive(Default)]
pub(super) struct LiveFeatures {
    /// Whether the last [`LiveFeatures::find`] chose the restricted products.
    active: bool,
    /// The live features' indices, ascending.
    index: Vec<u32>,
    /// For every feature, its position in `index`, or [`DEAD`].
    slot: Vec<u32>,
    /// The gathered activations or gradients, `rows × live`.
    operand: Vec<f32>,
    /// The gathered weight: its live columns (a narrowing layer) or rows (a widening one).
    weight: Vec<f32>,
    /// The restricted product's input gradient (a narrowing layer), `rows × live`; room
    /// for the forward product's column-major result before that.
    input_gradient: Vec<f32>,
    /// The restricted products' weight and bias gradients.
    grads: Grads,
}

impl LiveFeatures {
    /// Finds the live features of `act` (rows of `n` values), on the `side` of a wide
    /// layer, unless `restrict` is [`Restrict::Never`], and decides whether the restricted
    /// products run: at least one feature is live and, under [`Restrict::WhenItPays`], at
    /// least [`Side::min_dead_share`] of them are dead. Returns (and remembers, for
    /// [`LiveFeatures::is_active`]) that decision.
    pub fn find(&mut self, act: &[f32], (n, side): (usize, Side), restrict: Restrict) -> bool {
        self.active = false;
        if restrict == Restrict::Never || n == 0 {
            return false;
        }
        self.slot.clear();
        self.slot.resize(n, DEAD);
        let columns_per_task = PARALLEL_VALUES.div_ceil(act.len() / n).max(1);
        self.slot.par_chunks_mut(columns_per_task).enumerate().for_each(|(i, slot)| {
            let first = i * columns_per_task;
            let mut live = vec![false; slot.len()];
            for row in act.chunks_exact(n) {
                for (live, v) in live.iter_mut().zip(&row[first..]) {
                    // `!=`, not `>`: a NaN (which a ReLU never outputs) would stay live.
                    *live |= *v != 0.0;
                }
            }
            for (slot, live) in slot.iter_mut().zip(live) {
                *slot = if live { 0 } else { DEAD };
            }
        });
        self.index.clear();
        for (j, slot) in self.slot.iter_mut().enumerate() {
            if *slot != DEAD {
                *slot = self.index.len() as u32;
                self.index.push(j as u32);
            }
        }
        let (part, whole) = match restrict {
            #[cfg(test)]
            Restrict::Always => (1, n),
            _ => side.min_dead_share(act.len() / n),
        };
        let live = self.index.len();
        self.active = live > 0 && (n - live) * whole >= n * part;
        self.active
    }

    /// Whether the last [`LiveFeatures::find`] chose the restricted products.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A narrowing layer's forward pass (`out = x Wᵀ + bias`, then its ReLU, for `b`
    /// rows) over the live features of its input `x`, which [`LiveFeatures::find`] found.
    /// Keeps the gathered input and weight for [`LiveFeatures::narrowing_backward`].
    pub fn narrowing_forward(&mut self, layer: &Layer, x: &[f32], p: Params, out: &mut [f32], b: usize) {
        let live = self.index.len();
        gather_columns(x, layer.inputs, &self.index, &mut self.operand);
        gather_columns(p.weight, layer.inputs, &self.index, &mut self.weight);
        let restricted = Layer { inputs: live, ..*layer };
        let weights = Params { weight: &self.weight, bias: p.bias };
        linear_forward(&restricted, &self.operand, weights, out, (b, None), &mut self.input_gradient);
    }

    /// The gradients of the layer of the last [`LiveFeatures::narrowing_forward`] (same
    /// weights) from the gradient `g` `(b, out)` of its output: the weight's and bias's into
    /// `grads`, its input's into `g_in` (zero for the dead features).
    pub fn narrowing_backward(&mut self, g: &[f32], grads: &mut Grads, g_in: &mut [f32], b: usize) {
        let (n_in, live) = (g_in.len() / b, self.index.len());
        resize_grads(&mut self.grads, grads.bias.len() * live, grads.bias.len());
        self.input_gradient.resize(b * live, 0.0);
        let input_gradient = Some(&mut self.input_gradient[..b * live]);
        linear_backward(g, &self.operand, &self.weight, &mut self.grads, input_gradient, (b, None));
        scatter_columns(&self.grads.weight, (live, n_in), &self.slot, &mut grads.weight);
        grads.bias.copy_from_slice(&self.grads.bias);
        scatter_columns(&self.input_gradient[..b * live], (live, n_in), &self.slot, g_in);
    }

    /// A widening layer's gradients from the gradient `g` `(b, out)` of its output, zero
    /// outside the live features of that output (which [`LiveFeatures::find`] found), and
    /// its input `x` `(b, in)`: the weight's and bias's into `grads` (zero rows for the
    /// dead features), the input's into `g_in`.
    pub fn widening_backward(
        &mut self,
        g: &[f32],
        (x, weight): (&[f32], &[f32]),
        grads: &mut Grads,
        g_in: &mut [f32],
        b: usize,
    ) {
        let (n_out, n_in, live) = (grads.bias.len(), x.len() / b, self.index.len());
        gather_columns(g, n_out, &self.index, &mut self.operand);
        gather_rows(weight, n_in, &self.index, &mut self.weight);
        resize_grads(&mut self.grads, live * n_in, live);
        linear_backward(&self.operand, x, &self.weight, &mut self.grads, Some(g_in), (b, None));
        scatter_rows(&self.grads.weight, n_in, &self.slot, &mut grads.weight);
        for (bias, slot) in grads.bias.iter_mut().zip(&self.slot) {
            *bias = if *slot == DEAD { 0.0 } else { self.grads.bias[*slot as usize] };
        }
    }
}

/// Sizes `grads` for a `weight`-value weight and a `bias`-value bias.
fn resize_grads(grads: &mut Grads, weight: usize, bias: usize) {
    grads.weight.resize(weight, 0.0);
    grads.bias.resize(bias, 0.0);
}

/// Rows per parallel task for rows of `width` values.
fn rows_per_task(width: usize) -> usize {
    PARALLEL_VALUES.div_ceil(width.max(1))
}

/// `dst` = the columns `index` of `src` (rows of `n`), row-major, `rows × index.len()`.
fn gather_columns(src: &[f32], n: usize, index: &[u32], dst: &mut Vec<f32>) {
    let (rows, live) = (src.len() / n, index.len());
    dst.resize(rows * live, 0.0);
    let chunks = dst.par_chunks_mut(live).zip(src.par_chunks_exact(n));
    chunks.with_min_len(rows_per_task(live)).for_each(|(dst, src)| {
        for (v, j) in dst.iter_mut().zip(index) {
            *v = src[*j as usize];
        }
    });
}

/// `dst` (rows of `n`) = `src` (rows of `live`) in the columns whose `slot` is not
/// [`DEAD`], zero in the others.
fn scatter_columns(src: &[f32], (live, n): (usize, usize), slot: &[u32], dst: &mut [f32]) {
    let chunks = dst.par_chunks_mut(n).zip(src.par_chunks_exact(live));
    chunks.with_min_len(rows_per_task(n)).for_each(|(dst, src)| {
        for (v, slot) in dst.iter_mut().zip(slot) {
            *v = if *slot == DEAD { 0.0 } else { src[*slot as usize] };
        }
    });
}

/// `dst` = the rows `index` of `src` (rows of `width`).
fn gather_rows(src: &[f32], width: usize, index: &[u32], dst: &mut Vec<f32>) {
    dst.resize(index.len() * width, 0.0);
    let chunks = dst.par_chunks_mut(width).zip(index.par_iter());
    chunks.with_min_len(rows_per_task(width)).for_each(|(dst, j)| {
        dst.copy_from_slice(&src[*j as usize * width..][..width]);
    });
}

/// `dst` (rows of `width`) = the rows of `src` in the rows whose `slot` is not [`DEAD`],
/// zero in the others.
fn scatter_rows(src: &[f32], width: usize, slot: &[u32], dst: &mut [f32]) {
    let chunks = dst.par_chunks_mut(width).zip(slot.par_iter());
    chunks.with_min_len(rows_per_task(width)).for_each(|(dst, slot)| match *slot {
        DEAD => dst.fill(0.0),
        k => dst.copy_from_slice(&src[k as usize * width..][..width]),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerKind;

    /// Values in [-1, 1) from a simple generator, with the features `dead` zeroed in every
    /// row (`rows × n`) and a few single zeros elsewhere, as a ReLU leaves them.
    fn activations(rows: usize, n: usize, dead: impl Fn(usize) -> bool, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..rows * n)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = (state >> 40) as f32 / (1u64 << 24) as f32;
                if dead(i % n) || i % 7 == 0 { 0.0 } else { v }
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {g} against {w}");
        }
    }

    fn layer(inputs: usize, outputs: usize) -> Layer {
        Layer { name: "test", kind: LayerKind::Linear, inputs, outputs, side: 1, relu: true }
    }

    fn grads(l: &Layer) -> Grads {
        Grads { weight: vec![f32::NAN; l.inputs * l.outputs], bias: vec![f32::NAN; l.outputs] }
    }

    /// The restricted forward and backward passes of a narrowing layer give the dense
    /// ones', with exact zeros in the dead features' gradients.
    #[test]
    fn narrowing_layer_matches_dense_products() {
        let (b, l) = (5, layer(300, 17));
        let dead = |j: usize| j.is_multiple_of(3) || (100..160).contains(&j);
        let x = activations(b, l.inputs, dead, 1);
        let weight = activations(l.outputs, l.inputs, |_| false, 2);
        let bias = activations(1, l.outputs, |_| false, 3);
        let g = activations(b, l.outputs, |_| false, 4);
        let p = Params { weight: &weight, bias: &bias };

        let mut live = LiveFeatures::default();
        assert!(live.find(&x, (l.inputs, Side::Input), Restrict::WhenItPays));
        assert_eq!(live.index.len(), (0..l.inputs).filter(|j| !dead(*j)).count());
        let (mut want_out, mut out) = (vec![0.0; b * l.outputs], vec![f32::NAN; b * l.outputs]);
        linear_forward(&l, &x, p, &mut want_out, (b, None), &mut Vec::new());
        live.narrowing_forward(&l, &x, p, &mut out, b);
        assert_close(&out, &want_out, "output");

        let (mut want, mut got) = (grads(&l), grads(&l));
        let (mut want_in, mut got_in) = (vec![0.0; b * l.inputs], vec![f32::NAN; b * l.inputs]);
        linear_backward(&g, &x, &weight, &mut want, Some(&mut want_in), (b, None));
        live.narrowing_backward(&g, &mut got, &mut got_in, b);
        assert_close(&got.weight, &want.weight, "weight gradient");
        assert_close(&got.bias, &want.bias, "bias gradient");
        for row in got.weight.chunks(l.inputs) {
            assert!(row.iter().enumerate().all(|(j, v)| !dead(j) || *v == 0.0));
        }
        // The dead features' input gradient, which the ReLU's mask discards, is zero.
        assert!(got_in.chunks(l.inputs).all(|r| r.iter().enumerate().all(|(j, v)| !dead(j) || *v == 0.0)));
        let masked = |v: &[f32]| v.iter().zip(&x).map(|(g, x)| if *x != 0.0 { *g } else { 0.0 }).collect::<Vec<_>>();
        assert_close(&masked(&got_in), &masked(&want_in), "input gradient");
    }

    /// The restricted backward pass of a widening layer gives the dense one's, with zero
    /// rows for the dead outputs.
    #[test]
    fn widening_layer_matches_dense_products() {
        let (b, l) = (6, layer(13, 400));
        let dead = |j: usize| j % 2 == 1 || j >= 350;
        let out = activations(b, l.outputs, dead, 5);
        let g: Vec<f32> = activations(b, l.outputs, |_| false, 6)
            .iter()
            .zip(&out)
            .map(|(g, o)| if *o != 0.0 { *g } else { 0.0 })
            .collect();
        let x = activations(b, l.inputs, |_| false, 7);
        let weight = activations(l.outputs, l.inputs, |_| false, 8);

        let mut live = LiveFeatures::default();
        assert!(live.find(&out, (l.outputs, Side::Output), Restrict::WhenItPays));
        let (mut want, mut got) = (grads(&l), grads(&l));
        let (mut want_in, mut got_in) = (vec![0.0; b * l.inputs], vec![f32::NAN; b * l.inputs]);
        linear_backward(&g, &x, &weight, &mut want, Some(&mut want_in), (b, None));
        live.widening_backward(&g, (&x, &weight), &mut got, &mut got_in, b);
        assert_close(&got.weight, &want.weight, "weight gradient");
        assert_close(&got.bias, &want.bias, "bias gradient");
        assert_close(&got_in, &want_in, "input gradient");
        for (j, row) in got.weight.chunks(l.inputs).enumerate() {
            assert!(!dead(j) || row.iter().all(|v| *v == 0.0), "row {j}");
        }
    }

    /// Too few dead features for the side and the number of rows, none live, or the
    /// restriction switched off: the dense products run.
    #[test]
    fn restriction_only_when_it_pays() {
        let mut live = LiveFeatures::default();
        let dead = |rows: usize, count: usize| activations(rows, 120, move |j| j < count, 9);
        for (rows, side, least) in
            [(64, Side::Input, 15), (63, Side::Input, 40), (64, Side::Output, 30), (8, Side::Output, 48)]
        {
            let (few, enough) = (dead(rows, least - 1), dead(rows, least));
            assert!(!live.find(&few, (120, side), Restrict::WhenItPays), "{rows} rows, {} of 120 dead", least - 1);
            assert!(!live.is_active());
            assert!(live.find(&few, (120, side), Restrict::Always));
            assert!(live.find(&enough, (120, side), Restrict::WhenItPays), "{rows} rows, {least} of 120 dead");
            assert!(live.is_active());
            assert!(!live.find(&enough, (120, side), Restrict::Never));
        }
        assert!(!live.find(&dead(4, 0), (120, Side::Input), Restrict::Always), "none dead");
        assert!(!live.find(&vec![0.0; 320], (80, Side::Input), Restrict::Always), "all dead");
    }
}
