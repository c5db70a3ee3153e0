//! The layers' forward and backward kernels on batches, and the loss gradient: each
//! product through [`super::products`], bias, ReLU and sums fused into single passes.

use rayon::prelude::*;

use super::bf16::{self, Operands};
use super::products::{LARGE_WEIGHT, Mat, Split, linear_product, matmul, matmul_per_core, parallelism_for, product};
use super::{BatchLoss, Grads, Params};
use crate::{Layer, Likelihood, cb_log_normaliser, cb_log_normaliser_grad};

/// Input gradients that reduce over at least this many values (the decoder's 18432→512)
/// go through [`matmul_per_core`], by columns.
const LONG_REDUCTION: usize = 4096;

/// Weight gradients with at least this many rows (the decoder's last layer, 18432 × 512)
/// go through [`matmul_per_core`], by rows.
const MANY_WEIGHT_ROWS: usize = 4096;

/// Batches of at most this many rows go through [`linear_forward`]'s column-major product.
/// At batch 128 the plain product is faster for the decoder's widening layer (its forward
/// 20.7/21.8 ms through the column-major product, 16.6/17.9 ms plain, the whole step's
/// pass 4 ms shorter; Intel Xeon, 2026-12-05); batch 32 gains from the column-major one.
const COLUMN_MAJOR_ROWS: usize = 64;

/// `out = x Wᵀ + bias` for `b` rows, followed by the layer's ReLU. For at most
/// [`COLUMN_MAJOR_ROWS`] rows, the product is computed column-major into `scratch` and
/// transposed back: gemm then reads the weight in place instead of packing it. For a
/// widening layer (512→18432) it is done only with gemm's AVX-512 kernels: there (AMD EPYC
/// Zen 4) it takes the forward product from 14 to 6 ms at batch 32, while with the AVX2
/// kernels (Zen 3) it made the backward pass slower (BENCHMARKS.md). The other products
/// of a large weight go through [`linear_product`], by blocks of the weight shared out
/// between the cores, the rest through one gemm call. With `bf16`, the product is
/// [`bf16::matmul`]'s, its operands packed there.
pub(super) fn linear_forward(
    layer: &Layer,
    x: &[f32],
    p: Params,
    out: &mut [f32],
    (b, bf16): (usize, Option<&mut Operands>),
    scratch: &mut Vec<f32>,
) {
    let (n_out, n_in, relu) = (layer.outputs, layer.inputs, layer.relu);
    if let Some(ops) = bf16 {
        ops.a.set_rows(x, b, n_in);
        ops.b.set_transposed(p.weight, n_out, n_in);
        bf16::matmul(out, &ops.a, &ops.b, false);
        add_bias(out, p.bias, relu);
        return;
    }
    let x = Mat::rows(x, b, n_in);
    if b > COLUMN_MAJOR_ROWS || (n_in < n_out && !crate::machine::gemm_uses_avx512()) {
        if p.weight.len() >= LARGE_WEIGHT {
            linear_product(out, x, (p.weight, p.bias), (n_out, n_in), relu, scratch);
        } else {
            matmul(out, x, Mat::rows(p.weight, n_out, n_in).t(), false);
            add_bias(out, p.bias, relu);
        }
        return;
    }
    let weight_t = Mat::rows(p.weight, n_out, n_in).t();
    if scratch.len() < out.len() {
        scratch.resize(out.len(), 0.0);
    }
    let out_t = &mut scratch[..out.len()];
    let parallelism = parallelism_for(&x, &weight_t);
    product(out_t, true, x, weight_t, false, parallelism);
    let out_t = &*out_t;
    out.par_chunks_mut(n_out).enumerate().for_each(|(i, row)| {
        for ((v, t), bias) in row.iter_mut().zip(out_t[i..].iter().step_by(b)).zip(p.bias) {
            *v = bias_relu(*t, *bias, relu);
        }
    });
}

/// Adds `bias` to every row of `out` `(rows, bias.len())`, then applies a ReLU if
/// `relu`; rows are shared between the cores in runs of at least [`PARALLEL_VALUES`].
fn add_bias(out: &mut [f32], bias: &[f32], relu: bool) {
    let rows_per_task = PARALLEL_VALUES.div_ceil(bias.len()).max(1);
    out.par_chunks_mut(bias.len()).with_min_len(rows_per_task).for_each(|row| {
        for (v, bias) in row.iter_mut().zip(bias) {
            *v = bias_relu(*v, *bias, relu);
        }
    });
}

/// Values below which an elementwise pass stays on one core.
const PARALLEL_VALUES: usize = 1 << 14;

/// Gradients of a linear layer from the gradient `g` `(b, out)` of its output and its
/// input `x` `(b, in)`: the weight's and bias's into `grads`, the input's into `g_in` if
/// given; with `bf16`, both products are [`bf16::matmul`]'s, except a widening layer's on
/// AMX: there the f32 products are faster (the decoder's backward pass at batch 128
/// 20.5 against 23.4 ms, at batch 32 10.5 against 14.0; Intel Xeon, 2026-12-05), as
/// the weight gradient's 37.7 MB of output and the packing of both operands, not the
/// arithmetic, set the pace. In f32 the decoder's wide
/// layer shares its products out between the cores ([`matmul_per_core`]): the weight
/// gradient, [`MANY_WEIGHT_ROWS`], by rows (18432 × 128 × 512: 6.0 against 6.4 ms
/// through gemm's threads), the input gradient, a [`LONG_REDUCTION`], by columns (7.2
/// against 9.8 ms, faer 9.3; Intel Xeon, AVX-512 + AMX, 2026-12-05).
pub(super) fn linear_backward(
    g: &[f32],
    x: &[f32],
    weight: &[f32],
    grads: &mut Grads,
    g_in: Option<&mut [f32]>,
    (b, bf16): (usize, Option<&mut Operands>),
) {
    let (n_out, n_in) = (g.len() / b, x.len() / b);
    let bf16 = bf16.filter(|_| n_out <= n_in || bf16::Kernel::best() != Some(bf16::Kernel::Amx));
    match bf16 {
        Some(ops) => {
            ops.a.set_transposed(g, b, n_out);
            ops.b.set_rows(x, b, n_in);
            bf16::matmul(&mut grads.weight, &ops.a, &ops.b, false);
            if let Some(g_in) = g_in {
                ops.a.set_rows(g, b, n_out);
                ops.b.set_rows(weight, n_out, n_in);
                bf16::matmul(g_in, &ops.a, &ops.b, false);
            }
        }
        None => {
            let (g_t, x) = (Mat::rows(g, b, n_out).t(), Mat::rows(x, b, n_in));
            if n_out >= MANY_WEIGHT_ROWS {
                matmul_per_core(&mut grads.weight, g_t, x, Split::Rows);
            } else {
                matmul(&mut grads.weight, g_t, x, false);
            }
            if let Some(g_in) = g_in {
                if n_out >= LONG_REDUCTION && n_in < n_out {
                    matmul_per_core(g_in, Mat::rows(g, b, n_out), Mat::rows(weight, n_out, n_in), Split::Columns);
                } else {
                    matmul(g_in, Mat::rows(g, b, n_out), Mat::rows(weight, n_out, n_in), false);
                }
            }
        }
    }
    // Column runs of the bias gradient per core, each summed over the rows in order.
    let columns_per_task = PARALLEL_VALUES.div_ceil(b).max(1);
    grads.bias.par_chunks_mut(columns_per_task).enumerate().for_each(|(i, acc)| {
        acc.fill(0.0);
        let first = i * columns_per_task;
        for row in g.chunks_exact(n_out) {
            for (acc, v) in acc.iter_mut().zip(&row[first..]) {
                *acc += v;
            }
        }
    });
}

/// `g_in += g · W` for a linear layer's output gradient `g` `(b, out)`: its share of an
/// input gradient that another layer reading the same input has written.
pub(super) fn linear_input_gradient_add(g: &[f32], weight: &[f32], g_in: &mut [f32], b: usize) {
    let (n_out, n_in) = (g.len() / b, g_in.len() / b);
    matmul(g_in, Mat::rows(g, b, n_out), Mat::rows(weight, n_out, n_in), true);
}

/// Zeroes the gradient `g` wherever the ReLU output `act` is not positive.
pub(super) fn relu_mask(g: &mut [f32], act: &[f32]) {
    g.par_chunks_mut(PARALLEL_VALUES).zip(act.par_chunks(PARALLEL_VALUES)).for_each(|(g, act)| {
        for (g, a) in g.iter_mut().zip(act) {
            *g = relu_gate(*g, *a);
        }
    });
}

/// `value + bias`, through a ReLU if `relu`: a layer's output from its product.
#[inline(always)]
pub(super) fn bias_relu(value: f32, bias: f32, relu: bool) -> f32 {
    if relu { (value + bias).max(0.0) } else { value + bias }
}

/// `value` where the ReLU output `act` is positive, 0 elsewhere, without a branch: half of
/// a ReLU's outputs are zero at initialisation, in no order a branch predictor can learn,
/// and the branchless form lets the loops around it run on vectors: the backward pass of
/// the first transposed convolution at batch 128, from an initialised model, took 13.7–14.5
/// ms with a branch and 9.0–9.8 ms without (AMD EPYC Zen 4, BENCHMARKS.md 2026-12-07).
#[inline(always)]
pub(super) fn relu_gate(value: f32, act: f32) -> f32 {
    f32::from_bits(value.to_bits() & u32::from(act > 0.0).wrapping_neg())
}

/// The posterior and its gradients, for [`loss_gradient`].
pub(super) struct Posterior<'a> {
    /// Means, `(b, latent)`.
    pub mu: &'a [f32],
    /// Log-variances.
    pub logvar: &'a [f32],
    /// Standard deviations `exp(logvar / 2)`.
    pub std: &'a [f32],
    /// Receives the KL term's gradient with respect to `mu`.
    pub g_mu: &'a mut [f32],
    /// Receives the KL term's gradient with respect to `logvar`.
    pub g_logvar: &'a mut [f32],
}

/// The binary cross-entropy of target `x` under logit `l`, in the stable form
/// `max(l, 0) − l·x + log(1 + e^−|l|)`, and its derivative `sigmoid(l) − x`.
#[inline(always)]
fn bce_and_gradient(l: f32, x: f32) -> (f64, f32) {
    let e = (-l.abs()).exp();
    let sigmoid = if l >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    (f64::from(l.max(0.0) - l * x + e.ln_1p()), sigmoid - x)
}

/// The reconstruction term `−log p(x | z)` of each code whose `logits` were decoded,
/// `samples` codes per image of `x` (`pixels` values each), image-major.
pub(super) fn reconstruction_per_code(
    logits: &[f32],
    x: &[f32],
    (pixels, samples): (usize, usize),
    likelihood: Likelihood,
) -> Vec<f64> {
    logits
        .par_chunks(pixels)
        .enumerate()
        .map(|(r, l)| {
            let x = &x[(r / samples) * pixels..][..pixels];
            let bce: f64 = l.iter().zip(x).map(|(l, x)| bce_and_gradient(*l, *x).0).sum();
            match likelihood {
                Likelihood::Bernoulli => bce,
                Likelihood::ContinuousBernoulli => {
                    bce - l.iter().map(|l| f64::from(cb_log_normaliser(*l))).sum::<f64>()
                }
            }
        })
        .collect()
}

/// The loss sums of a batch of `b` images `x`, and the gradients of
/// `(BCE + kl_weight · KL) / B` with respect to the `logits` (into `g_logits`) and,
/// through the KL term only, to the posterior's parameters (the decoder's share is added
/// in the backward pass).
pub(super) fn loss_gradient(
    logits: &[f32],
    x: &[f32],
    g_logits: &mut [f32],
    q: Posterior,
    b: usize,
    (likelihood, kl_weight): (Likelihood, f32),
) -> BatchLoss {
    let inv_b = 1.0 / b as f32;
    let kl_scale = kl_weight * inv_b;
    const CHUNK: usize = 1 << 12;
    let bce: f64 = logits
        .par_chunks(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .zip(g_logits.par_chunks_mut(CHUNK))
        .map(|((l, x), g)| {
            let mut sum = 0.0f64;
            for i in 0..l.len() {
                let (bce, gradient) = bce_and_gradient(l[i], x[i]);
                sum += bce;
                g[i] = gradient * inv_b;
            }
            if likelihood == Likelihood::ContinuousBernoulli {
                // −log p(x | l) = BCE − log C(l).
                for (l, g) in l.iter().zip(g.iter_mut()) {
                    sum -= f64::from(cb_log_normaliser(*l));
                    *g -= cb_log_normaliser_grad(*l) * inv_b;
                }
            }
            sum
        })
        .sum();
    let mut kl = 0.0f64;
    for i in 0..q.mu.len() {
        let (mu, logvar, var) = (q.mu[i], q.logvar[i], q.std[i] * q.std[i]);
        kl += 0.5 * f64::from(var + mu * mu - logvar - 1.0);
        q.g_mu[i] = mu * kl_scale;
        q.g_logvar[i] = 0.5 * (var - 1.0) * kl_scale;
    }
    BatchLoss { bce, kl }
}

/// What [`iw_loss_gradient`] reads of the sampled codes and fills in.
pub(super) struct ImportanceSamples<'a> {
    /// The codes, `(b · samples, latent)`, image-major.
    pub z: &'a [f32],
    /// Their standard-normal noise.
    pub eps: &'a [f32],
    /// Codes per image.
    pub samples: usize,
    /// Receives each code's normalised importance weight divided by `b`.
    pub weights: &'a mut Vec<f32>,
}

/// The importance-weighted objective of Burda et al. (2015), `−(1/B) Σ_i log (1/K) Σ_s w_is`
/// with `log w = log p(x | z) + log p(z) − log q(z | x)`: its gradient with respect to the
/// logits of every code (each row scaled by its normalised weight `w̃ / B`), and the
/// direct part with respect to the posterior (`−½ / B` on each log-variance, none on the
/// means; the paths through the codes follow in the backward pass). Returns the loss sums
/// as the other objective reports them: the reconstruction term averaged over each image's
/// samples, and the analytic KL.
pub(super) fn iw_loss_gradient(
    logits: &[f32],
    x: &[f32],
    g_logits: &mut [f32],
    q: Posterior,
    codes: ImportanceSamples,
    (b, likelihood): (usize, Likelihood),
) -> BatchLoss {
    let (pixels, latent, samples) = (x.len() / b, q.mu.len() / b, codes.samples);
    // −log p(x | z) of every code, and its gradient with respect to the logits (unscaled).
    let nll: Vec<f64> = logits
        .par_chunks(pixels)
        .zip(g_logits.par_chunks_mut(pixels))
        .enumerate()
        .map(|(r, (l, g))| {
            let x = &x[r / samples * pixels..(r / samples + 1) * pixels];
            let mut sum = 0.0f64;
            for i in 0..l.len() {
                let (bce, gradient) = bce_and_gradient(l[i], x[i]);
                sum += bce;
                g[i] = gradient;
                let l = l[i];
                if likelihood == Likelihood::ContinuousBernoulli {
                    sum -= f64::from(cb_log_normaliser(l));
                    g[i] -= cb_log_normaliser_grad(l);
                }
            }
            sum
        })
        .collect();
    // log w = −nll − ½|z|² + ½|ε|² + ½ Σ logvar (the 2π terms of p(z) and q(z | x) cancel).
    let half_sq = |v: &[f32]| 0.5 * v.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
    let log_w: Vec<f64> = (0..b * samples)
        .map(|r| {
            let (code, i) = (r * latent..(r + 1) * latent, r / samples);
            let half_logvar = 0.5 * q.logvar[i * latent..(i + 1) * latent].iter().map(|&v| f64::from(v)).sum::<f64>();
            -nll[r] - half_sq(&codes.z[code.clone()]) + half_sq(&codes.eps[code]) + half_logvar
        })
        .collect();
    codes.weights.clear();
    for image in log_w.chunks(samples) {
        let max = image.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = image.iter().map(|w| (w - max).exp()).sum();
        codes.weights.extend(image.iter().map(|w| ((w - max).exp() / total / b as f64) as f32));
    }
    g_logits.par_chunks_mut(pixels).zip(codes.weights.par_iter()).for_each(|(g, &weight)| {
        for g in g {
            *g *= weight;
        }
    });
    let mut kl = 0.0f64;
    for i in 0..q.mu.len() {
        let (mu, logvar, var) = (q.mu[i], q.logvar[i], q.std[i] * q.std[i]);
        kl += 0.5 * f64::from(var + mu * mu - logvar - 1.0);
        q.g_mu[i] = 0.0;
        q.g_logvar[i] = -0.5 / b as f32;
    }
    BatchLoss { bce: nll.iter().sum::<f64>() / samples as f64, kl }
}
