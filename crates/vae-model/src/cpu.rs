//! The model on the CPU without candle's graph: a training step with a hand-written
//! backward pass, and a batched encoder.
//!
//! candle's autograd is general: every node of the graph gets a freshly zeroed gradient
//! buffer that its contributions are added into, ReLU and bias gradients go through
//! generic masked and strided kernels, and every intermediate is a new allocation. For a
//! fixed, small model on two cores those costs are a large part of a step. [`CpuStep`]
//! computes the same objective, `(BCE + KL) / B`, and its gradients for every parameter
//! of the [`Vae`](crate::Vae) with explicit GEMMs (the `gemm` crate that candle's CPU
//! backend uses) into buffers kept from step to step: convolutions as per-image
//! im2col/col2im products spread over the cores, fully-connected layers as one
//! multi-threaded product each, the bias, ReLU and loss gradients fused into single
//! passes. candle's autograd stays the reference: tests compare every gradient with it.
//! [`CpuStep::encode`] runs the encoder's half of the same forward pass.

use crate::{KERNEL, VaeConfig, col2im_add, im2col, parameter_specs};
use candle_core::{CpuStorage, DType, Storage, Tensor};
use candle_nn::VarMap;
use gemm::Parallelism;
use rayon::prelude::*;
use std::time::Instant;

/// Index of each parameter in [`parameter_specs`] order.
mod p {
    pub const CONV1: usize = 0;
    pub const CONV2: usize = 2;
    pub const ENC_LINEAR: usize = 4;
    pub const ENC_LINEAR2: usize = 6;
    pub const MU: usize = 8;
    pub const VAR: usize = 10;
    pub const DEC_LINEAR: usize = 12;
    pub const DEC_LINEAR2: usize = 14;
    pub const DEC_LINEAR3: usize = 16;
    pub const DECONV1: usize = 18;
    pub const DECONV2: usize = 20;
    pub const COUNT: usize = 22;
}

/// The parts of a step that [`CpuStep::layer_seconds`] times: each layer (ReLU and bias
/// included), `enc.mu+var` for the two heads with the reparameterisation, and `loss`.
pub const LAYERS: [&str; 11] = [
    "enc.conv1",
    "enc.conv2",
    "enc.linear",
    "enc.linear2",
    "enc.mu+var",
    "dec.linear",
    "dec.linear2",
    "dec.linear3",
    "dec.deconv1",
    "dec.deconv2",
    "loss",
];

/// Indices into [`LAYERS`].
mod layer {
    pub const CONV1: usize = 0;
    pub const CONV2: usize = 1;
    pub const ENC_LINEAR: usize = 2;
    pub const ENC_LINEAR2: usize = 3;
    pub const HEADS: usize = 4;
    pub const DEC_LINEAR: usize = 5;
    pub const DEC_LINEAR2: usize = 6;
    pub const DEC_LINEAR3: usize = 7;
    pub const DECONV1: usize = 8;
    pub const DECONV2: usize = 9;
    pub const LOSS: usize = 10;
}

const FORWARD: usize = 0;
const BACKWARD: usize = 1;

/// The sums of the two loss terms over a batch (divide by its size for per-image values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLoss {
    /// Binary cross-entropy of the reconstructions, summed over pixels and images.
    pub bce: f64,
    /// KL divergence of the posteriors from N(0, I), summed over dimensions and images.
    pub kl: f64,
}

/// Forward and backward pass of the VAE's training objective on the CPU, with the
/// activations and gradients kept between steps.
pub struct CpuStep {
    cfg: VaeConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    grads: Vec<Vec<f32>>,
    buf: Buffers,
    kl_weight: f32,
}

/// Activations of the forward pass and gradients of the backward pass, `batch` rows each.
#[derive(Default)]
struct Buffers {
    cols1: Vec<f32>,
    a1: Vec<f32>,
    cols2: Vec<f32>,
    a2: Vec<f32>,
    a3: Vec<f32>,
    a4: Vec<f32>,
    mu: Vec<f32>,
    logvar: Vec<f32>,
    std: Vec<f32>,
    z: Vec<f32>,
    d1: Vec<f32>,
    d2: Vec<f32>,
    d3: Vec<f32>,
    a5: Vec<f32>,
    logits: Vec<f32>,
    scratch: Vec<f32>,
    g_logits: Vec<f32>,
    g_a5: Vec<f32>,
    g_d3: Vec<f32>,
    g_d2: Vec<f32>,
    g_d1: Vec<f32>,
    g_z: Vec<f32>,
    g_mu: Vec<f32>,
    g_logvar: Vec<f32>,
    g_a4: Vec<f32>,
    g_a3: Vec<f32>,
    g_a2: Vec<f32>,
    g_a1: Vec<f32>,
    /// Seconds per [`LAYERS`] entry, forward and backward, of the last call.
    seconds: [[f64; 2]; LAYERS.len()],
}

/// Adds the time since `since` to `seconds[layer][pass]`; returns the present instant.
fn lap(seconds: &mut [[f64; 2]; LAYERS.len()], layer: usize, pass: usize, since: Instant) -> Instant {
    let now = Instant::now();
    seconds[layer][pass] += (now - since).as_secs_f64();
    now
}

/// Sizes of the model's layers.
#[derive(Clone, Copy)]
struct Dims {
    ch: usize,
    s0: usize,
    s1: usize,
    s2: usize,
    c1: usize,
    c2: usize,
    h1: usize,
    h2: usize,
    zd: usize,
    flat: usize,
    pix: usize,
}

impl Dims {
    fn of(cfg: &VaeConfig) -> Self {
        let s0 = cfg.image_size;
        Self {
            ch: cfg.image_channels,
            s0,
            s1: s0 + 1 - KERNEL,
            s2: cfg.feature_side(),
            c1: cfg.conv_channels[0],
            c2: cfg.conv_channels[1],
            h1: cfg.hidden[0],
            h2: cfg.hidden[1],
            zd: cfg.latent_dim,
            flat: cfg.flat_features(),
            pix: cfg.pixels(),
        }
    }
}

const KK: usize = KERNEL * KERNEL;

impl CpuStep {
    /// A step over the model's parameters in `varmap` (named as in [`parameter_specs`]);
    /// it reads them afresh at every call, so it follows an optimiser's in-place updates.
    /// Fails if one is missing, has the wrong shape, or is not an f32 tensor on the CPU.
    pub fn new(cfg: &VaeConfig, varmap: &VarMap) -> candle_core::Result<Self> {
        let specs = parameter_specs(cfg);
        let data = varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        let mut params = Vec::with_capacity(specs.len());
        for spec in &specs {
            let Some(var) = data.get(&spec.name) else {
                candle_core::bail!("cpu step: parameter {} is missing", spec.name);
            };
            if var.dims() != spec.shape.as_slice() || !var.device().is_cpu() || var.dtype() != DType::F32 {
                candle_core::bail!(
                    "cpu step: parameter {} must be an f32 CPU tensor of shape {:?}",
                    spec.name,
                    spec.shape
                );
            }
            params.push(var.as_tensor().clone());
        }
        let names = specs.into_iter().map(|s| s.name).collect();
        Ok(Self { cfg: cfg.clone(), names, params, grads: Vec::new(), buf: Buffers::default(), kl_weight: 1.0 })
    }

    /// The gradient of the last step's objective for parameter `name` (`None` before
    /// the first [`CpuStep::run`]).
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        self.names.iter().position(|n| n == name).and_then(|i| self.grads.get(i)).map(Vec::as_slice)
    }

    /// Seconds spent in each of [`LAYERS`] by the last [`CpuStep::run`] or
    /// [`CpuStep::encode`], as `(name, forward, backward)`.
    pub fn layer_seconds(&self) -> impl Iterator<Item = (&'static str, f64, f64)> + '_ {
        LAYERS.iter().zip(&self.buf.seconds).map(|(name, [fwd, bwd])| (*name, *fwd, *bwd))
    }

    /// Sets the weight β of the KL term in the objective whose gradients [`CpuStep::run`]
    /// computes, `(BCE + β·KL) / B` (a β-VAE; 1, the default, is the VAE). The loss sums
    /// it returns stay unweighted.
    pub fn set_kl_weight(&mut self, beta: f32) {
        self.kl_weight = beta;
    }

    /// Runs the forward and backward pass on images `x` `(B, C, H, W)` in `[0, 1]`
    /// (flattened) with the reparameterisation noise `eps` `(B, latent_dim)`, leaving
    /// the gradients of `(BCE + β·KL) / B` in [`CpuStep::grad`] (β = 1 unless
    /// [`CpuStep::set_kl_weight`]); returns the loss sums.
    pub fn run(&mut self, x: &[f32], eps: &[f32]) -> candle_core::Result<BatchLoss> {
        let d = Dims::of(&self.cfg);
        let batch = batch_size(&d, x, Some(eps))?;
        if self.grads.is_empty() {
            self.grads = parameter_specs(&self.cfg).iter().map(|s| vec![0.0; s.shape.iter().product()]).collect();
        }
        let (buf, grads, kl_weight) = (&mut self.buf, &mut self.grads, self.kl_weight);
        buf.seconds = Default::default();
        with_weights(&self.params, |w| {
            buf.resize(&d, batch, batch, true);
            buf.forward(&d, batch, w, x, eps);
            let loss = buf.loss_gradient(x, batch, kl_weight);
            buf.backward(&d, batch, w, eps, grads);
            loss
        })
    }

    /// Posterior means and log-variances, `(B, latent_dim)` each, of images `x`
    /// `(B, C, H, W)` in `[0, 1]` (flattened). The fully-connected layers take
    /// [`ENCODE_ROWS`] images at a time (so that their large weights are read once per
    /// that many), the convolutions [`ENCODE_CONV_ROWS`].
    pub fn encode(&mut self, x: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let d = Dims::of(&self.cfg);
        let batch = batch_size(&d, x, None)?;
        let (mut mu, mut logvar) = (Vec::with_capacity(batch * d.zd), Vec::with_capacity(batch * d.zd));
        let buf = &mut self.buf;
        buf.seconds = Default::default();
        with_weights(&self.params, |w| {
            for x in x.chunks(ENCODE_ROWS * d.pix) {
                let rows = x.len() / d.pix;
                buf.resize(&d, rows, rows.min(ENCODE_CONV_ROWS), false);
                buf.encode(&d, rows, w, x, ENCODE_CONV_ROWS);
                mu.extend_from_slice(&buf.mu);
                logvar.extend_from_slice(&buf.logvar);
            }
        })?;
        Ok((mu, logvar))
    }
}

/// Images per pass of [`CpuStep::encode`]'s fully-connected layers (its largest buffer
/// is then 512 × 18432 floats, 38 MB, for the seed's model).
pub const ENCODE_ROWS: usize = 512;

/// Images per pass of [`CpuStep::encode`]'s convolutions: enough to keep both cores
/// busy, few enough that their im2col columns (144 × 576 floats per image for conv2)
/// stay small.
pub const ENCODE_CONV_ROWS: usize = 64;

/// The number of images in `x` (and noise rows in `eps`), or an error naming the
/// mismatch; pixel values must lie in `[0, 1]`.
fn batch_size(d: &Dims, x: &[f32], eps: Option<&[f32]>) -> candle_core::Result<usize> {
    let batch = x.len() / d.pix;
    if batch == 0 || x.len() != batch * d.pix || eps.is_some_and(|e| e.len() != batch * d.zd) {
        candle_core::bail!(
            "cpu step: {} pixel values{} do not make a batch of {}-pixel images{}",
            x.len(),
            eps.map(|e| format!(" and {} noise values", e.len())).unwrap_or_default(),
            d.pix,
            eps.map(|_| format!(" with {} latents", d.zd)).unwrap_or_default()
        );
    }
    if let Some(bad) = x.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        candle_core::bail!("cpu step: pixel value {bad} is outside [0, 1]");
    }
    Ok(batch)
}

/// Calls `f` with the parameters' values, read-locked for the duration.
fn with_weights<R>(params: &[Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> candle_core::Result<R> {
    let guards: Vec<_> = params.iter().map(Tensor::storage_and_layout).collect();
    let mut w: Vec<&[f32]> = Vec::with_capacity(p::COUNT);
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => w.push(&v[start..end]),
            _ => candle_core::bail!("cpu step: parameters must be contiguous f32 CPU tensors"),
        }
    }
    Ok(f(&w))
}

impl Buffers {
    /// Sizes the buffers for `b` images, the convolutions' for `conv_rows`: those of the
    /// encoder, or with `training` all.
    fn resize(&mut self, d: &Dims, b: usize, conv_rows: usize, training: bool) {
        let scratch = (d.c1 * KK * d.s2 * d.s2).max(d.ch * KK * d.s1 * d.s1);
        for (buf, per_image) in [
            (&mut self.cols1, d.ch * KK * d.s1 * d.s1),
            (&mut self.a1, d.c1 * d.s1 * d.s1),
            (&mut self.cols2, d.c1 * KK * d.s2 * d.s2),
        ] {
            buf.resize(conv_rows * per_image, 0.0);
        }
        for (buf, per_image) in [
            (&mut self.a2, d.flat),
            (&mut self.a3, d.h1),
            (&mut self.a4, d.h2),
            (&mut self.mu, d.zd),
            (&mut self.logvar, d.zd),
        ] {
            buf.resize(b * per_image, 0.0);
        }
        if !training {
            return;
        }
        for (buf, per_image) in [
            (&mut self.std, d.zd),
            (&mut self.z, d.zd),
            (&mut self.d1, d.h2),
            (&mut self.d2, d.h1),
            (&mut self.d3, d.flat),
            (&mut self.a5, d.c1 * d.s1 * d.s1),
            (&mut self.logits, d.pix),
            (&mut self.scratch, scratch),
            (&mut self.g_logits, d.pix),
            (&mut self.g_a5, d.c1 * d.s1 * d.s1),
            (&mut self.g_d3, d.flat),
            (&mut self.g_d2, d.h1),
            (&mut self.g_d1, d.h2),
            (&mut self.g_z, d.zd),
            (&mut self.g_mu, d.zd),
            (&mut self.g_logvar, d.zd),
            (&mut self.g_a4, d.h2),
            (&mut self.g_a3, d.h1),
            (&mut self.g_a2, d.flat),
            (&mut self.g_a1, d.c1 * d.s1 * d.s1),
        ] {
            buf.resize(b * per_image, 0.0);
        }
    }

    /// The encoder: `x` to `mu` and `logvar`, keeping what the backward pass needs.
    /// The convolutions run `conv_rows` images at a time (their buffers hold that many),
    /// the fully-connected layers on all `b` at once.
    fn encode(&mut self, d: &Dims, b: usize, w: &[&[f32]], x: &[f32], conv_rows: usize) {
        let (a1, cols1, cols2) = (d.c1 * d.s1 * d.s1, d.ch * KK * d.s1 * d.s1, d.c1 * KK * d.s2 * d.s2);
        let mut t = Instant::now();
        for (x, a2) in x.chunks(conv_rows * d.pix).zip(self.a2.chunks_mut(conv_rows * d.flat)) {
            let n = x.len() / d.pix;
            let a1 = &mut self.a1[..n * a1];
            conv_forward(x, (d.ch, d.s0), &mut self.cols1[..n * cols1], w[p::CONV1], w[p::CONV1 + 1], a1);
            t = lap(&mut self.seconds, layer::CONV1, FORWARD, t);
            conv_forward(a1, (d.c1, d.s1), &mut self.cols2[..n * cols2], w[p::CONV2], w[p::CONV2 + 1], a2);
            t = lap(&mut self.seconds, layer::CONV2, FORWARD, t);
        }
        linear_forward(&self.a2, &w[p::ENC_LINEAR..], &mut self.a3, b, true, &mut self.scratch);
        t = lap(&mut self.seconds, layer::ENC_LINEAR, FORWARD, t);
        linear_forward(&self.a3, &w[p::ENC_LINEAR2..], &mut self.a4, b, true, &mut self.scratch);
        t = lap(&mut self.seconds, layer::ENC_LINEAR2, FORWARD, t);
        linear_forward(&self.a4, &w[p::MU..], &mut self.mu, b, false, &mut self.scratch);
        linear_forward(&self.a4, &w[p::VAR..], &mut self.logvar, b, false, &mut self.scratch);
        lap(&mut self.seconds, layer::HEADS, FORWARD, t);
    }

    /// The whole model: `x` and the noise `eps` to the reconstruction logits.
    fn forward(&mut self, d: &Dims, b: usize, w: &[&[f32]], x: &[f32], eps: &[f32]) {
        let (s1, s2) = (d.s1, d.s2);
        self.encode(d, b, w, x, b);
        let mut t = Instant::now();
        for (((z, std), (mu, logvar)), eps) in
            self.z.iter_mut().zip(&mut self.std).zip(self.mu.iter().zip(&self.logvar)).zip(eps)
        {
            *std = (0.5 * logvar).exp();
            *z = mu + eps * *std;
        }
        t = lap(&mut self.seconds, layer::HEADS, FORWARD, t);
        linear_forward(&self.z, &w[p::DEC_LINEAR..], &mut self.d1, b, true, &mut self.scratch);
        t = lap(&mut self.seconds, layer::DEC_LINEAR, FORWARD, t);
        linear_forward(&self.d1, &w[p::DEC_LINEAR2..], &mut self.d2, b, true, &mut self.scratch);
        t = lap(&mut self.seconds, layer::DEC_LINEAR2, FORWARD, t);
        linear_forward(&self.d2, &w[p::DEC_LINEAR3..], &mut self.d3, b, true, &mut self.scratch);
        t = lap(&mut self.seconds, layer::DEC_LINEAR3, FORWARD, t);
        deconv_forward(&self.d3, (d.c2, s2), &mut self.scratch, w[p::DECONV1], w[p::DECONV1 + 1], &mut self.a5, true);
        t = lap(&mut self.seconds, layer::DECONV1, FORWARD, t);
        deconv_forward(
            &self.a5,
            (d.c1, s1),
            &mut self.scratch,
            w[p::DECONV2],
            w[p::DECONV2 + 1],
            &mut self.logits,
            false,
        );
        lap(&mut self.seconds, layer::DECONV2, FORWARD, t);
    }

    /// The loss sums, and the gradients of `(BCE + kl_weight · KL) / B` with respect to
    /// the logits and, through the KL term only, to `mu` and `logvar` (the decoder's share
    /// is added in the backward pass).
    fn loss_gradient(&mut self, x: &[f32], b: usize, kl_weight: f32) -> BatchLoss {
        let t = Instant::now();
        let inv_b = 1.0 / b as f32;
        let kl_scale = kl_weight * inv_b;
        const CHUNK: usize = 1 << 12;
        let bce: f64 = self
            .logits
            .par_chunks(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(self.g_logits.par_chunks_mut(CHUNK))
            .map(|((l, x), g)| {
                let mut sum = 0.0f64;
                for i in 0..l.len() {
                    let (l, x) = (l[i], x[i]);
                    let e = (-l.abs()).exp();
                    sum += f64::from(l.max(0.0) - l * x + e.ln_1p());
                    let sigmoid = if l >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
                    g[i] = (sigmoid - x) * inv_b;
                }
                sum
            })
            .sum();
        let mut kl = 0.0f64;
        for i in 0..self.mu.len() {
            let (mu, logvar, var) = (self.mu[i], self.logvar[i], self.std[i] * self.std[i]);
            kl += 0.5 * f64::from(var + mu * mu - logvar - 1.0);
            self.g_mu[i] = mu * kl_scale;
            self.g_logvar[i] = 0.5 * (var - 1.0) * kl_scale;
        }
        lap(&mut self.seconds, layer::LOSS, FORWARD, t);
        BatchLoss { bce, kl }
    }

    fn backward(&mut self, d: &Dims, b: usize, w: &[&[f32]], eps: &[f32], grads: &mut [Vec<f32>]) {
        let (s0, s1) = (d.s0, d.s1);
        let g = grads;
        let mut t = Instant::now();
        deconv_backward(
            &self.g_logits,
            (d.c1, d.s1),
            &self.a5,
            &mut self.scratch,
            w[p::DECONV2],
            &mut g[p::DECONV2..],
            &mut self.g_a5,
        );
        relu_mask(&mut self.g_a5, &self.a5);
        t = lap(&mut self.seconds, layer::DECONV2, BACKWARD, t);
        deconv_backward(
            &self.g_a5,
            (d.c2, d.s2),
            &self.d3,
            &mut self.scratch,
            w[p::DECONV1],
            &mut g[p::DECONV1..p::DECONV1 + 2],
            &mut self.g_d3,
        );
        relu_mask(&mut self.g_d3, &self.d3);
        t = lap(&mut self.seconds, layer::DECONV1, BACKWARD, t);
        linear_backward(&self.g_d3, &self.d2, w[p::DEC_LINEAR3], &mut g[p::DEC_LINEAR3..], Some(&mut self.g_d2), b);
        relu_mask(&mut self.g_d2, &self.d2);
        t = lap(&mut self.seconds, layer::DEC_LINEAR3, BACKWARD, t);
        linear_backward(&self.g_d2, &self.d1, w[p::DEC_LINEAR2], &mut g[p::DEC_LINEAR2..], Some(&mut self.g_d1), b);
        relu_mask(&mut self.g_d1, &self.d1);
        t = lap(&mut self.seconds, layer::DEC_LINEAR2, BACKWARD, t);
        linear_backward(&self.g_d1, &self.z, w[p::DEC_LINEAR], &mut g[p::DEC_LINEAR..], Some(&mut self.g_z), b);
        t = lap(&mut self.seconds, layer::DEC_LINEAR, BACKWARD, t);
        for (((g_mu, g_logvar), g_z), (eps, std)) in
            self.g_mu.iter_mut().zip(&mut self.g_logvar).zip(&self.g_z).zip(eps.iter().zip(&self.std))
        {
            *g_mu += g_z;
            *g_logvar += g_z * eps * 0.5 * std;
        }
        linear_backward(&self.g_mu, &self.a4, w[p::MU], &mut g[p::MU..], Some(&mut self.g_a4), b);
        linear_backward(&self.g_logvar, &self.a4, w[p::VAR], &mut g[p::VAR..], None, b);
        // The var layer's input gradient adds into the mu layer's.
        matmul(&mut self.g_a4, Mat::rows(&self.g_logvar, b, d.zd), Mat::rows(w[p::VAR], d.zd, d.h2), true);
        relu_mask(&mut self.g_a4, &self.a4);
        t = lap(&mut self.seconds, layer::HEADS, BACKWARD, t);
        linear_backward(&self.g_a4, &self.a3, w[p::ENC_LINEAR2], &mut g[p::ENC_LINEAR2..], Some(&mut self.g_a3), b);
        relu_mask(&mut self.g_a3, &self.a3);
        t = lap(&mut self.seconds, layer::ENC_LINEAR2, BACKWARD, t);
        linear_backward(&self.g_a3, &self.a2, w[p::ENC_LINEAR], &mut g[p::ENC_LINEAR..], Some(&mut self.g_a2), b);
        relu_mask(&mut self.g_a2, &self.a2);
        t = lap(&mut self.seconds, layer::ENC_LINEAR, BACKWARD, t);
        conv_backward(
            &self.g_a2,
            (d.c1, s1),
            &self.cols2,
            &mut self.scratch,
            w[p::CONV2],
            &mut g[p::CONV2..p::CONV2 + 2],
            Some(&mut self.g_a1),
        );
        relu_mask(&mut self.g_a1, &self.a1);
        t = lap(&mut self.seconds, layer::CONV2, BACKWARD, t);
        conv_backward(&self.g_a1, (d.ch, s0), &self.cols1, &mut self.scratch, w[p::CONV1], &mut g[p::CONV1..], None);
        lap(&mut self.seconds, layer::CONV1, BACKWARD, t);
    }
}

/// A strided matrix view for `gemm`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `data` as a row-major `rows × cols` matrix.
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    fn t(self) -> Self {
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
fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    let parallelism = parallelism_for(&a, &b);
    matmul_with(dst, a, b, accumulate, parallelism);
}

/// All cores for products of at least 2²⁰ multiply-adds, one below that.
fn parallelism_for(a: &Mat, b: &Mat) -> Parallelism {
    if a.rows * a.cols * b.cols >= 1 << 20 { Parallelism::Rayon(0) } else { Parallelism::None }
}

fn matmul_with(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, parallelism: Parallelism) {
    product(dst, false, a, b, accumulate, parallelism);
}

/// `dst = a · b` (or `+=`), `dst` row-major or, with `column_major`, column-major.
fn product(dst: &mut [f32], column_major: bool, a: Mat, b: Mat, accumulate: bool, parallelism: Parallelism) {
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

/// Batches of at most this many rows go through [`linear_forward`]'s column-major product.
const COLUMN_MAJOR_ROWS: usize = 128;

/// `out = x Wᵀ + bias` for `b` rows, followed by a ReLU if `relu`; `wb` starts with the
/// layer's weight `(out, in)` and bias. For up to [`COLUMN_MAJOR_ROWS`] rows and a layer
/// that narrows (`in ≥ out`), the product is computed column-major into `scratch` and
/// transposed back: gemm then reads the weight in place instead of packing it. For the
/// 18432→512 layer that is 1.2–1.7× faster at batch 32 and 128; it is slower at 512
/// rows, and for the widening 512→18432 layer it made the backward pass slower
/// (BENCHMARKS.md).
fn linear_forward(x: &[f32], wb: &[&[f32]], out: &mut [f32], b: usize, relu: bool, scratch: &mut Vec<f32>) {
    let (weight, bias) = (wb[0], wb[1]);
    let (n_out, n_in) = (bias.len(), x.len() / b);
    let (x, weight_t) = (Mat::rows(x, b, n_in), Mat::rows(weight, n_out, n_in).t());
    if b > COLUMN_MAJOR_ROWS || n_in < n_out {
        matmul(out, x, weight_t, false);
        add_bias(out, bias, 1, relu);
        return;
    }
    if scratch.len() < out.len() {
        scratch.resize(out.len(), 0.0);
    }
    let out_t = &mut scratch[..out.len()];
    let parallelism = parallelism_for(&x, &weight_t);
    product(out_t, true, x, weight_t, false, parallelism);
    let out_t = &*out_t;
    out.par_chunks_mut(n_out).enumerate().for_each(|(i, row)| {
        for ((v, t), bias) in row.iter_mut().zip(out_t[i..].iter().step_by(b)).zip(bias) {
            *v = if relu { (t + bias).max(0.0) } else { t + bias };
        }
    });
}

/// Adds `bias[c]` to every value of plane `c` of `out` `(…, channels, plane)`, then
/// applies a ReLU if `relu`.
fn add_bias(out: &mut [f32], bias: &[f32], plane: usize, relu: bool) {
    for (values, bias) in out.chunks_exact_mut(plane).zip(bias.iter().cycle()) {
        for v in values {
            *v = if relu { (*v + bias).max(0.0) } else { *v + bias };
        }
    }
}

/// Gradients of a linear layer from the gradient `g` `(b, out)` of its output and its
/// input `x` `(b, in)`: the weight's and bias's into `grads[0..2]`, the input's into
/// `g_in` if given.
fn linear_backward(g: &[f32], x: &[f32], weight: &[f32], grads: &mut [Vec<f32>], g_in: Option<&mut [f32]>, b: usize) {
    let (n_out, n_in) = (g.len() / b, x.len() / b);
    let (g_weight, g_bias) = grads.split_at_mut(1);
    matmul(&mut g_weight[0], Mat::rows(g, b, n_out).t(), Mat::rows(x, b, n_in), false);
    let g_bias = &mut g_bias[0];
    g_bias.fill(0.0);
    for row in g.chunks_exact(n_out) {
        for (acc, v) in g_bias.iter_mut().zip(row) {
            *acc += v;
        }
    }
    if let Some(g_in) = g_in {
        matmul(g_in, Mat::rows(g, b, n_out), Mat::rows(weight, n_out, n_in), false);
    }
}

/// Zeroes the gradient `g` wherever the ReLU output `act` is not positive.
fn relu_mask(g: &mut [f32], act: &[f32]) {
    g.par_chunks_mut(1 << 14).zip(act.par_chunks(1 << 14)).for_each(|(g, act)| {
        for (g, a) in g.iter_mut().zip(act) {
            if *a <= 0.0 {
                *g = 0.0;
            }
        }
    });
}

/// `Conv2d` (stride 1, no padding) and ReLU on a batch `x` of `(c, s, s)` images: keeps
/// each image's columns `(c·k·k, s'·s')` in `cols` for the backward pass.
fn conv_forward(x: &[f32], (c, s): (usize, usize), cols: &mut [f32], weight: &[f32], bias: &[f32], out: &mut [f32]) {
    let so = s + 1 - KERNEL;
    let (n_out, ckk, hw) = (bias.len(), c * KK, so * so);
    cols.par_chunks_mut(ckk * hw).zip(x.par_chunks(c * s * s)).zip(out.par_chunks_mut(n_out * hw)).for_each(
        |((cols, img), out)| {
            im2col(img, (c, s, s), KERNEL, cols);
            matmul_with(out, Mat::rows(weight, n_out, ckk), Mat::rows(cols, ckk, hw), false, Parallelism::None);
            add_bias(out, bias, hw, true);
        },
    );
}

/// Gradients of a [`conv_forward`] layer from `g` `(b, out, s', s')` (already masked by
/// the ReLU) and the saved columns: weight and bias into `grads[0..2]`, the input
/// `(b, c, s, s)` into `g_in` if given.
fn conv_backward(
    g: &[f32],
    (c, s): (usize, usize),
    cols: &[f32],
    scratch: &mut [f32],
    weight: &[f32],
    grads: &mut [Vec<f32>],
    g_in: Option<&mut [f32]>,
) {
    let so = s + 1 - KERNEL;
    let (ckk, hw) = (c * KK, so * so);
    let n_out = grads[1].len();
    let b = g.len() / (n_out * hw);
    let (g_weight, g_bias) = grads.split_at_mut(1);
    // dW = Σ_b g_b (out × hw) · cols_bᵀ (hw × ckk)
    sum_of_products(&mut g_weight[0], b, |i| {
        (
            Mat::rows(&g[i * n_out * hw..(i + 1) * n_out * hw], n_out, hw),
            Mat::rows(&cols[i * ckk * hw..(i + 1) * ckk * hw], ckk, hw).t(),
        )
    });
    channel_sums(g, n_out, hw, &mut g_bias[0]);
    if let Some(g_in) = g_in {
        // dcols_b = Wᵀ (ckk × out) · g_b, then summed back into the image.
        let scratch = &mut scratch[..b * ckk * hw];
        scratch.par_chunks_mut(ckk * hw).zip(g.par_chunks(n_out * hw)).zip(g_in.par_chunks_mut(c * s * s)).for_each(
            |((dcols, g), g_in)| {
                matmul_with(
                    dcols,
                    Mat::rows(weight, n_out, ckk).t(),
                    Mat::rows(g, n_out, hw),
                    false,
                    Parallelism::None,
                );
                g_in.fill(0.0);
                col2im_add(dcols, (c, s, s), KERNEL, g_in);
            },
        );
    }
}

/// `ConvTranspose2d` (stride 1, no padding) on a batch `x` of `(c, s, s)` images into
/// `(out, s+k−1, s+k−1)` images, with a ReLU if `relu`.
fn deconv_forward(
    x: &[f32],
    (c, s): (usize, usize),
    scratch: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    relu: bool,
) {
    let so = s + KERNEL - 1;
    let (n_out, hw) = (bias.len(), s * s);
    let okk = n_out * KK;
    let b = x.len() / (c * hw);
    let scratch = &mut scratch[..b * okk * hw];
    scratch.par_chunks_mut(okk * hw).zip(x.par_chunks(c * hw)).zip(out.par_chunks_mut(n_out * so * so)).for_each(
        |((cols, x), out)| {
            // cols (out·k·k × hw) = Wᵀ · x_b, W being (c × out·k·k)
            matmul_with(cols, Mat::rows(weight, c, okk).t(), Mat::rows(x, c, hw), false, Parallelism::None);
            out.fill(0.0);
            col2im_add(cols, (n_out, so, so), KERNEL, out);
            add_bias(out, bias, so * so, relu);
        },
    );
}

/// Gradients of a [`deconv_forward`] layer from `g` `(b, out, s+k−1, s+k−1)` and its
/// input `x` `(b, c, s, s)`: weight and bias into `grads[0..2]`, the input's into `g_in`.
fn deconv_backward(
    g: &[f32],
    (c, s): (usize, usize),
    x: &[f32],
    scratch: &mut [f32],
    weight: &[f32],
    grads: &mut [Vec<f32>],
    g_in: &mut [f32],
) {
    let so = s + KERNEL - 1;
    let n_out = grads[1].len();
    let (okk, hw) = (n_out * KK, s * s);
    let b = x.len() / (c * hw);
    let scratch = &mut scratch[..b * okk * hw];
    // gcols_b = im2col(g_b) (out·k·k × hw); g_in_b = W (c × out·k·k) · gcols_b
    scratch.par_chunks_mut(okk * hw).zip(g.par_chunks(n_out * so * so)).zip(g_in.par_chunks_mut(c * hw)).for_each(
        |((gcols, g), g_in)| {
            im2col(g, (n_out, so, so), KERNEL, gcols);
            matmul_with(g_in, Mat::rows(weight, c, okk), Mat::rows(gcols, okk, hw), false, Parallelism::None);
        },
    );
    let (g_weight, g_bias) = grads.split_at_mut(1);
    // dW (c × out·k·k) = Σ_b x_b (c × hw) · gcols_bᵀ
    let scratch = &*scratch;
    sum_of_products(&mut g_weight[0], b, |i| {
        (
            Mat::rows(&x[i * c * hw..(i + 1) * c * hw], c, hw),
            Mat::rows(&scratch[i * okk * hw..(i + 1) * okk * hw], okk, hw).t(),
        )
    });
    channel_sums(g, n_out, so * so, &mut g_bias[0]);
}

/// `dst = Σ_{i < n} a_i · b_i` over the cores: each worker sums a contiguous run of the
/// products into its own buffer, and the buffers are added at the end.
fn sum_of_products<'a>(dst: &mut [f32], n: usize, product: impl Fn(usize) -> (Mat<'a>, Mat<'a>) + Sync) {
    let workers = rayon::current_num_threads().min(n).max(1);
    let per_worker = n.div_ceil(workers);
    let partials: Vec<Vec<f32>> = (0..workers)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0.0; dst.len()];
            for (j, i) in (t * per_worker..((t + 1) * per_worker).min(n)).enumerate() {
                let (a, b) = product(i);
                matmul_with(&mut acc, a, b, j > 0, Parallelism::None);
            }
            acc
        })
        .collect();
    dst.fill(0.0);
    for partial in partials {
        for (d, v) in dst.iter_mut().zip(partial) {
            *d += v;
        }
    }
}

/// `sums[c] = Σ_b Σ_p g[b, c, p]` for `g` `(b, channels, plane)`.
fn channel_sums(g: &[f32], channels: usize, plane: usize, sums: &mut [f32]) {
    sums.fill(0.0);
    for image in g.chunks_exact(channels * plane) {
        for (sum, plane) in sums.iter_mut().zip(image.chunks_exact(plane)) {
            *sum += plane.iter().sum::<f32>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Vae, init_varmap, loss_terms};
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use rand_distr::StandardNormal;

    fn mnist_images(n: usize) -> Vec<f32> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let test = vae_data::load_split(&dir, vae_data::SplitKind::Test).unwrap();
        test.gather_f32(&(0..n).collect::<Vec<_>>())
    }

    /// Loss and every parameter gradient against candle's autograd on the candle model,
    /// for the seed's model and for a smaller one with other widths, the latter also as a
    /// β-VAE (KL weighted by 4).
    #[test]
    fn matches_candle_autograd() {
        let small = VaeConfig { latent_dim: 3, conv_channels: [4, 6], hidden: [24, 12], ..VaeConfig::default() };
        for (cfg, batch, beta) in [(VaeConfig::default(), 5, 1.0), (small.clone(), 3, 1.0), (small, 3, 4.0)] {
            let dev = Device::Cpu;
            let varmap = VarMap::new();
            init_varmap(&varmap, &cfg, 11, &dev).unwrap();
            let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
            let pixels = mnist_images(batch);
            let mut rng = StdRng::seed_from_u64(5);
            let eps: Vec<f32> = (0..batch * cfg.latent_dim).map(|_| rng.sample(StandardNormal)).collect();

            let x = Tensor::from_vec(pixels.clone(), (batch, 1, 28, 28), &dev).unwrap();
            let e = Tensor::from_vec(eps.clone(), (batch, cfg.latent_dim), &dev).unwrap();
            let terms = loss_terms(&vae.forward(&x, &e).unwrap(), &x).unwrap();
            let objective = ((&terms.bce + (&terms.kl * beta).unwrap()).unwrap() / batch as f64).unwrap();
            let reference = objective.backward().unwrap();

            let vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
            let mut step = CpuStep::new(&cfg, &varmap).unwrap();
            step.set_kl_weight(beta as f32);
            let loss = step.run(&pixels, &eps).unwrap();
            let bce = f64::from(terms.bce.to_scalar::<f32>().unwrap());
            let kl = f64::from(terms.kl.to_scalar::<f32>().unwrap());
            assert!((loss.bce - bce).abs() < 1e-5 * bce, "bce {} vs {bce}", loss.bce);
            assert!((loss.kl - kl).abs() < 1e-4 * kl.max(1.0), "kl {} vs {kl}", loss.kl);
            for (name, var) in &vars {
                let want = reference.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let got = step.grad(name).unwrap();
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
                let diff = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff <= 1e-4 * scale, "{name}: max difference {diff}, scale {scale}");
            }
            let (mu, logvar) = vae.encode(&x).unwrap();
            let (our_mu, our_logvar) = step.encode(&pixels).unwrap();
            for (want, got) in [(mu, our_mu), (logvar, our_logvar)] {
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(want.len() == got.len() && diff < 1e-4, "encoder differs by {diff}");
            }
            // A second, smaller batch reuses the buffers and gives the same result as a
            // fresh step.
            let again = step.run(&pixels[..784], &eps[..cfg.latent_dim]).unwrap();
            let mut fresh = CpuStep::new(&cfg, &varmap).unwrap();
            fresh.set_kl_weight(beta as f32);
            let fresh = fresh.run(&pixels[..784], &eps[..cfg.latent_dim]).unwrap();
            assert_eq!(again, fresh);
        }
    }

    /// More images than one encoder chunk (of both sizes), the last chunks partial; a
    /// smaller model keeps candle's side quick.
    #[test]
    fn encode_in_chunks_matches_candle() {
        let cfg = VaeConfig { conv_channels: [4, 6], hidden: [24, 12], ..VaeConfig::default() };
        let varmap = VarMap::new();
        init_varmap(&varmap, &cfg, 2, &Device::Cpu).unwrap();
        let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        let n = ENCODE_ROWS + ENCODE_CONV_ROWS + 3;
        let pixels = mnist_images(n);
        let x = Tensor::from_vec(pixels.clone(), (n, 1, 28, 28), &Device::Cpu).unwrap();
        let (mu, logvar) = vae.encode(&x).unwrap();
        let (our_mu, our_logvar) = CpuStep::new(&cfg, &varmap).unwrap().encode(&pixels).unwrap();
        for (want, got) in [(mu, our_mu), (logvar, our_logvar)] {
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(want.len() == got.len() && diff < 1e-4, "encoder differs by {diff}");
        }
    }

    #[test]
    fn bad_batches_and_parameters_are_errors() {
        let cfg = VaeConfig::default();
        let varmap = VarMap::new();
        init_varmap(&varmap, &cfg, 0, &Device::Cpu).unwrap();
        let mut step = CpuStep::new(&cfg, &varmap).unwrap();
        let err = |r: candle_core::Result<BatchLoss>| r.unwrap_err().to_string();
        assert!(err(step.run(&[0.5; 700], &[0.0; 10])).contains("do not make a batch"));
        assert!(err(step.run(&[0.5; 784], &[0.0; 20])).contains("do not make a batch"));
        assert!(err(step.run(&[], &[])).contains("do not make a batch"));
        assert!(step.encode(&[0.5; 785]).unwrap_err().to_string().contains("do not make a batch"));
        assert!(step.grad("enc.conv1.weight").is_none(), "no gradient before the first step");
        let mut nan = vec![0.5; 784];
        nan[3] = f32::NAN;
        assert!(err(step.run(&nan, &[0.0; 10])).contains("outside [0, 1]"));
        let other = VaeConfig { latent_dim: 4, ..cfg };
        assert!(CpuStep::new(&other, &varmap).err().unwrap().to_string().contains("shape"));
        varmap.data().lock().unwrap().remove("dec.linear.bias");
        assert!(CpuStep::new(&cfg, &varmap).err().unwrap().to_string().contains("dec.linear.bias is missing"));
    }
}
