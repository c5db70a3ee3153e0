//! The model on the CPU without candle's graph: a training step with a hand-written
//! backward pass, and a batched encoder.
//!
//! candle's autograd is general: every node of the graph gets a freshly zeroed gradient
//! buffer that its contributions are added into, ReLU and bias gradients go through
//! generic masked and strided kernels, and every intermediate is a new allocation. For a
//! fixed, small model on two cores those costs are a large part of a step. [`CpuStep`]
//! computes the same objective, `(BCE + KL) / B`, and its gradients for every parameter
//! of the [`Vae`](crate::Vae) with explicit GEMMs (the `gemm` crate that candle's CPU
//! backend uses, the thin wide ones shared out between the cores by hand, bf16 kernels
//! of our own on AMX or AVX-512 BF16 under [`Precision::Bf16`]) for the fully-connected layers, in f32
//! restricted to the features a ReLU left alive in the batch around the two wide ones (`live`),
//! direct convolution kernels of our
//! own (AVX-512, AVX2 or scalar, picked at run time) for the convolutions, one image per
//! core at a time, all into buffers kept from step to step, the bias, ReLU and loss
//! gradients fused into single passes. candle's autograd stays the reference: tests
//! compare every gradient with it.
//! [`CpuStep::encode`] runs the encoder's half of the same forward pass.

mod amx;
mod bf16;
mod conv;
mod kernels;
mod live;
mod pass;
mod products;
mod simd;
mod sparse;
#[cfg(test)]
mod tests;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use candle_nn::VarMap;

use crate::{Layer, Layers, Likelihood, Result, VaeConfig, VaeError};
use pass::Buffers;
use sparse::SparseInput;

use kernels::reconstruction_per_code;

/// The sums of the two loss terms over a batch (divide by its size for per-image values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLoss {
    /// The reconstruction term `−log p(x | z)`, summed over pixels and images: the binary
    /// cross-entropy, minus the log-normalisers under the continuous Bernoulli.
    pub bce: f64,
    /// KL divergence of the posteriors from N(0, I), summed over dimensions and images.
    pub kl: f64,
}

/// The arithmetic of the CPU step's products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// f32 throughout: the default, and the one whose bits repeat on one kind of CPU.
    #[default]
    F32,
    /// The products of the two wide layers (the encoder's first fully-connected layer and
    /// the decoder's last: three quarters of the work), forward and both gradients, with
    /// their operands rounded to bfloat16 and f32 accumulation (on AMX the decoder's two
    /// gradients stay f32, which is faster there); the weights, the other layers and the
    /// optimiser stay f32. Computed on AMX tiles where the process may use
    /// them ([`crate::machine::amx_bf16_granted`]), otherwise on AVX-512 BF16
    /// ([`crate::machine::has_avx512_bf16`]); [`crate::machine::bf16_isa`] says which.
    Bf16,
}

impl Precision {
    /// Its name as the flags and the run records spell it: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// One layer's weight and bias values.
#[derive(Clone, Copy)]
struct Params<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
}

/// One layer's weight and bias gradients.
#[derive(Default)]
struct Grads {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// Forward and backward pass of the VAE's training objective on the CPU, with the
/// activations and gradients kept between steps.
pub struct CpuStep {
    table: Layers<Layer>,
    /// Each layer's weight and bias, resolved by name once.
    params: Layers<[Tensor; 2]>,
    grads: Option<Layers<Grads>>,
    buf: Buffers,
    /// The encoder's wide layer on sparse inputs, for [`CpuStep::encode`].
    sparse: SparseInput,
    likelihood: Likelihood,
    kl_weight: f32,
}

/// Images per pass of [`CpuStep::encode`]'s fully-connected layers (its largest buffer
/// is then 512 × 18432 floats, 38 MB, for the reference's model).
pub const ENCODE_ROWS: usize = 512;

/// Codes per pass of [`CpuStep::log_likelihoods`]. Against 128 a pass, the wide layer's
/// weight is read (and copied to rows without cache conflicts) a quarter as often, for
/// about 170 MB more of peak memory: on an AMD EPYC Zen 4, `vae-train`'s test evaluation
/// took 196 instead of 245 ms per 500 images and `vae-eval` (k = 16) 6.3 instead of 7.3 s
/// per 2,000 images, with the same figures; 1024 codes a pass gained no more
/// (BENCHMARKS.md, 2026-12-07).
pub const DECODE_ROWS: usize = 512;

/// Images per pass of [`CpuStep::encode`]'s convolutions: enough to keep both cores
/// busy, few enough that the first convolution's output (16 × 26 × 26 floats per image
/// in the reference's model) stays small.
pub const ENCODE_CONV_ROWS: usize = 64;

impl CpuStep {
    /// A step over the model's parameters in `varmap` (named as in
    /// [`crate::parameter_specs`]); it reads them afresh at every call, so it follows an
    /// optimiser's in-place updates. Fails if one is missing, has the wrong shape, or is
    /// not an f32 tensor on the CPU.
    pub fn new(cfg: &VaeConfig, varmap: &VarMap) -> Result<Self> {
        cfg.validate()?;
        let table = cfg.layers();
        let data = varmap.data().lock().map_err(|_| VaeError::LockPoisoned { what: "the VarMap" })?;
        let tensor = |name: String, shape: &[usize]| {
            let Some(var) = data.get(&name) else {
                return Err(VaeError::BadParameter { name, reason: "is missing".into() });
            };
            if var.dims() != shape || !var.device().is_cpu() || var.dtype() != DType::F32 {
                let reason =
                    format!("must be an f32 CPU tensor of shape {shape:?}, not {:?} {:?}", var.dtype(), var.dims());
                return Err(VaeError::BadParameter { name, reason });
            }
            Ok(var.as_tensor().clone())
        };
        let params = table.try_map(|layer| {
            let weight = tensor(format!("{}.weight", layer.name), &layer.weight_shape())?;
            Ok::<_, VaeError>([weight, tensor(format!("{}.bias", layer.name), &[layer.outputs])?])
        })?;
        drop(data);
        let likelihood = cfg.likelihood;
        Ok(Self {
            table,
            params,
            grads: None,
            buf: Buffers::default(),
            sparse: SparseInput::default(),
            likelihood,
            kl_weight: 1.0,
        })
    }

    /// The gradient of the last step's objective for parameter `name` (`None` before
    /// the first [`CpuStep::run`]).
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        let grads = self.grads.as_ref()?;
        let (layer, kind) = name.rsplit_once('.')?;
        let (_, g) = self.table.all().into_iter().zip(grads.all()).find(|(l, _)| l.name == layer)?;
        match kind {
            "weight" => Some(&g.weight),
            "bias" => Some(&g.bias),
            _ => None,
        }
    }

    /// Seconds spent in each part of the last [`CpuStep::run`] or [`CpuStep::encode`], as
    /// `(name, forward, backward)`: every layer (its bias and ReLU, and the masking of its
    /// input's gradient, included), then `sampling+loss` (the reparameterisation and the
    /// loss gradient).
    pub fn layer_seconds(&self) -> impl Iterator<Item = (&'static str, f64, f64)> + '_ {
        let times = &self.buf.times;
        let layers = self.table.all().into_iter().zip(times.layers.all()).map(|(l, [fwd, bwd])| (l.name, *fwd, *bwd));
        layers.chain(std::iter::once(("sampling+loss", times.loss[0], times.loss[1])))
    }

    /// The step for a model computed on `device` in `precision`: [`CpuStep::new`] in that
    /// precision on the CPU; `None` elsewhere, where candle's graph computes in f32 only
    /// (an error for [`Precision::Bf16`]).
    pub fn on_device(
        cfg: &VaeConfig,
        varmap: &VarMap,
        device: &candle_core::Device,
        precision: Precision,
    ) -> Result<Option<Self>> {
        if !device.is_cpu() {
            if precision != Precision::F32 {
                return Err(VaeError::Unsupported(format!(
                    "{} precision needs the CPU (--device cpu)",
                    precision.name()
                )));
            }
            return Ok(None);
        }
        let mut step = Self::new(cfg, varmap)?;
        step.set_precision(precision)?;
        Ok(Some(step))
    }

    /// Sets the arithmetic of the products of every later call; [`Precision::Bf16`] is
    /// refused, with the CPU named, where the CPU lacks AVX-512 BF16.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Bf16 && !crate::machine::has_avx512_bf16() {
            return Err(VaeError::Unsupported(format!(
                "bf16 precision needs a CPU with AVX-512 BF16 (AMD Zen 4 or later, Intel Cooper Lake, \
                 Sapphire Rapids or later); this one ({}) has {} kernels: use f32",
                crate::machine::cpu_model(),
                crate::machine::gemm_isa()
            )));
        }
        self.buf.bf16 = (precision == Precision::Bf16).then(Default::default);
        Ok(())
    }

    /// The arithmetic of the products ([`CpuStep::set_precision`]).
    pub fn precision(&self) -> Precision {
        if self.buf.bf16.is_some() { Precision::Bf16 } else { Precision::F32 }
    }

    /// Sets the weight β of the KL term in the objective whose gradients [`CpuStep::run`]
    /// computes, `(BCE + β·KL) / B` (a β-VAE; 1, the default, is the VAE). The loss sums
    /// it returns stay unweighted.
    pub fn set_kl_weight(&mut self, beta: f32) {
        self.kl_weight = beta;
    }

    /// Runs the forward and backward pass on images `x` `(B, C, H, W)` in `[0, 1]`
    /// (flattened) with the reparameterisation noise `eps` `(B, latent_dim)`, leaving
    /// the gradients of `(−log p(x | z) + β·KL) / B` (under [`VaeConfig::likelihood`]) in
    /// [`CpuStep::grad`] (β = 1 unless [`CpuStep::set_kl_weight`]); returns the loss sums.
    pub fn run(&mut self, x: &[f32], eps: &[f32]) -> Result<BatchLoss> {
        self.step(x, eps, None)
    }

    /// Like [`CpuStep::run`], for the importance-weighted objective of Burda et al. (2015)
    /// with `samples` codes per image: the gradients of
    /// `−(1/B) Σ_i log (1/K) Σ_s p(x_i, z_is) / q(z_is | x_i)` (the KL weight does not apply),
    /// from noise `eps` `(B · samples, latent_dim)`, each image's samples together. The loss
    /// sums returned are the ELBO's terms as [`CpuStep::run`] reports them (the
    /// reconstruction term averaged over the samples, the analytic KL), so that runs compare.
    pub fn run_importance_weighted(&mut self, x: &[f32], eps: &[f32], samples: usize) -> Result<BatchLoss> {
        self.step(x, eps, Some(samples))
    }

    /// The step of either objective: the VAE's, or with `samples` the importance-weighted one.
    fn step(&mut self, x: &[f32], eps: &[f32], samples: Option<usize>) -> Result<BatchLoss> {
        let t = &self.table;
        let k = samples.unwrap_or(1);
        if k == 0 || !eps.len().is_multiple_of(k) {
            return Err(VaeError::BadBatch(format!("{} noise values are not {k} samples per image", eps.len())));
        }
        let batch = batch_size(t, x, Some(&eps[..eps.len() / k]))?;
        let grads = self.grads.get_or_insert_with(|| {
            t.map(|l| Grads { weight: vec![0.0; l.weight_shape().iter().product()], bias: vec![0.0; l.outputs] })
        });
        let (buf, objective) = (&mut self.buf, (self.likelihood, self.kl_weight));
        buf.times = Default::default();
        with_weights(&self.params, |w| {
            buf.resize(t, batch, batch, k);
            buf.forward(t, (batch, k), w, x, eps);
            let loss = match samples {
                None => buf.loss(x, batch, objective),
                Some(k) => buf.importance_weighted_loss(x, (batch, k), eps, objective.0),
            };
            buf.backward(t, (batch, k), w, (x, eps), grads);
            loss
        })
    }

    /// `log p(x_i | z_i)` under the model's likelihood for each image of `x`
    /// `(B, C, H, W)` in `[0, 1]` (flattened) and its code, row `i` of `z`
    /// `(B, latent_dim)`: the decoder's half of the forward pass, without gradients, for
    /// likelihood bounds and test losses, [`DECODE_ROWS`] codes a pass.
    pub fn log_likelihoods(&mut self, x: &[f32], z: &[f32]) -> Result<Vec<f64>> {
        let t = &self.table;
        let batch = batch_size(t, x, Some(z))?;
        let (pixels, latent) = (t.conv1.input_len(), t.mu.outputs);
        let (buf, likelihood) = (&mut self.buf, self.likelihood);
        buf.times = Default::default();
        with_weights(&self.params, |w| {
            let mut out = Vec::with_capacity(batch);
            for (x, z) in x.chunks(DECODE_ROWS * pixels).zip(z.chunks(DECODE_ROWS * latent)) {
                let rows = z.len() / latent;
                buf.resize(t, rows, 1, 1);
                buf.codes().copy_from_slice(z);
                buf.decode(t, rows, w);
                let per_code = reconstruction_per_code(&buf.out.deconv2, x, (pixels, 1), likelihood);
                out.extend(per_code.into_iter().map(|r| -r));
            }
            out
        })
    }

    /// Posterior means and log-variances, `(B, latent_dim)` each, of images `x`
    /// `(B, C, H, W)` in `[0, 1]` (flattened). The fully-connected layers take
    /// [`ENCODE_ROWS`] images at a time (so that their large weights are read once per
    /// that many), the convolutions [`ENCODE_CONV_ROWS`].
    pub fn encode(&mut self, x: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let t = &self.table;
        let batch = batch_size(t, x, None)?;
        let latent = t.mu.outputs;
        let (mut mu, mut logvar) = (Vec::with_capacity(batch * latent), Vec::with_capacity(batch * latent));
        let (buf, sparse) = (&mut self.buf, &mut self.sparse);
        buf.times = Default::default();
        with_weights(&self.params, |w| {
            for x in x.chunks(ENCODE_ROWS * t.conv1.input_len()) {
                let rows = x.len() / t.conv1.input_len();
                buf.resize(t, rows, rows.min(ENCODE_CONV_ROWS), 0);
                buf.encode(t, (rows, ENCODE_CONV_ROWS), w, x, Some(&mut *sparse));
                mu.extend_from_slice(&buf.out.mu);
                logvar.extend_from_slice(&buf.out.var);
            }
        })?;
        Ok((mu, logvar))
    }
}

/// The KL divergence of the posteriors `N(mu, exp(logvar))` (row-major, any number of
/// images) from N(0, I), summed over dimensions and images.
pub fn posterior_kl(mu: &[f32], logvar: &[f32]) -> f64 {
    mu.iter().zip(logvar).map(|(m, lv)| 0.5 * f64::from(lv.exp() + m * m - 1.0 - lv)).sum()
}

/// The codes `mu + eps · exp(logvar / 2)` for the noise `eps`, whose rows take the
/// posteriors in turn: one row per image, or several samples of every image, sample-major.
pub fn sampled_codes(mu: &[f32], logvar: &[f32], eps: &[f32]) -> Vec<f32> {
    eps.iter().zip(mu.iter().zip(logvar).cycle()).map(|(e, (m, lv))| m + e * (0.5 * lv).exp()).collect()
}

/// The number of images in `x` (and noise rows in `eps`), or an error naming the
/// mismatch; pixel values must lie in `[0, 1]`.
fn batch_size(t: &Layers<Layer>, x: &[f32], eps: Option<&[f32]>) -> Result<usize> {
    let (pixels, latent) = (t.conv1.input_len(), t.mu.outputs);
    let batch = x.len() / pixels;
    if batch == 0 || x.len() != batch * pixels || eps.is_some_and(|e| e.len() != batch * latent) {
        return Err(VaeError::BadBatch(format!(
            "{} pixel values{} do not make a batch of {pixels}-pixel images{}",
            x.len(),
            eps.map(|e| format!(" and {} noise values", e.len())).unwrap_or_default(),
            eps.map(|_| format!(" with {latent} latents")).unwrap_or_default()
        )));
    }
    if let Some(bad) = x.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(VaeError::BadBatch(format!("pixel value {bad} is outside [0, 1]")));
    }
    Ok(batch)
}

/// The values of a contiguous f32 CPU tensor, from its read-locked storage.
fn values<'a, G: std::ops::Deref<Target = Storage>>(
    (storage, layout): &'a (G, &candle_core::Layout),
) -> Result<&'a [f32]> {
    match (&**storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(&v[start..end]),
        _ => Err(VaeError::BadParameter {
            name: "a parameter".into(),
            reason: "must be a contiguous f32 CPU tensor".into(),
        }),
    }
}

/// A pointer into one buffer, shared by the threads of a parallel loop that write
/// disjoint parts of it.
struct SharedMut<T>(*mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedMut<T> {}

// SAFETY: its users keep the buffer alive over the parallel loop and write each value
// from one thread only.
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The address of value `i`; the caller keeps `i` inside the buffer.
    fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// Calls `f` with the parameters' values, read-locked for the duration.
fn with_weights<R>(params: &Layers<[Tensor; 2]>, f: impl FnOnce(&Layers<Params>) -> R) -> Result<R> {
    let guards = params.map(|[w, b]| [w.storage_and_layout(), b.storage_and_layout()]);
    let w = guards.try_map(|[w, b]| Ok::<_, VaeError>(Params { weight: values(w)?, bias: values(b)? }))?;
    Ok(f(&w))
}
