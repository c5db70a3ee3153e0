//! The convolutional VAE of the published reference experiment, in [candle](https://github.com/huggingface/candle).
//!
//! The architecture is one table, [`VaeConfig::layers`] (see there for the picture);
//! the candle graph here, the parameter list and the CPU step are all derived from it.
//!
//! Tensor names and layouts are those of the PyTorch module's `state_dict`
//! (`enc.conv1.weight`, …, `dec.deconv2.bias`), so a safetensors file exported from
//! PyTorch loads unchanged and weights trained here load into PyTorch.
//!
//! candle cannot seed its CPU random generator, so initial weights ([`init_varmap`])
//! and the reparameterisation noise (an argument of [`Vae::forward`]) come from the
//! caller's seeded generator.
//!
//! # Example
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use vae_model::{Vae, VaeConfig, init_varmap};
//!
//! # fn main() -> Result<(), vae_model::VaeError> {
//! let cfg = VaeConfig::default();
//! let device = Device::Cpu;
//! let varmap = VarMap::new();
//! init_varmap(&varmap, &cfg, 0, &device)?; // PyTorch's default init, seeded
//! let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
//! let images = Tensor::zeros((2, 1, 28, 28), DType::F32, &device)?;
//! let (mu, logvar) = vae.encode(&images)?;
//! assert_eq!(mu.dims(), &[2, 10]);
//! let reconstruction = vae.decode(&mu)?; // probabilities, (2, 1, 28, 28)
//! assert_eq!(reconstruction.dims(), &[2, 1, 28, 28]);
//! # let _ = logvar;
//! # Ok(())
//! # }
//! ```

mod arch;
pub mod cpu;
mod error;
mod layers;
mod likelihood;
pub mod machine;
mod weights;

use candle_core::{D, Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use arch::{KERNEL, Layer, LayerKind, Layers, VaeConfig};
pub use cpu::{BatchLoss, CpuStep, DECODE_ROWS, Precision, posterior_kl, sampled_codes};
pub use error::{Result, VaeError};
pub use layers::{Conv2d, ConvTranspose2d, Linear, col2im_add, im2col};
pub use likelihood::{Likelihood, cb_log_normaliser, cb_log_normaliser_grad};
pub use weights::{
    ParamSpec, init_varmap, load_or_init_vae, load_vae, load_varmap, parameter_specs, read_tensors, save_tensors,
    take_tensor, varmap_tensors,
};

/// The device named by `spec`: `cpu`, or `cuda` / `cuda:N` (GPU N), which needs a build
/// with the `cuda` feature and a CUDA device; anything else is a clear error.
pub fn device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Some(0),
        other => other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    let Some(ordinal) = ordinal else {
        return Err(VaeError::Config(format!("unknown device '{spec}': expected cpu, cuda or cuda:N")));
    };
    Device::new_cuda(ordinal).map_err(|e| {
        VaeError::Config(format!(
            "device {spec} is not available ({e}); CUDA needs a build with `--features cuda` \
             on a machine with the CUDA toolkit"
        ))
    })
}

/// One layer of the candle graph, built from its row of the layer table.
#[derive(Debug, Clone)]
enum Op {
    Conv(Conv2d),
    Linear(Linear),
    Deconv(ConvTranspose2d),
}

impl Op {
    /// The layer's module, its parameters read from `vb` under the layer's name.
    fn new(layer: &Layer, vb: &VarBuilder) -> Result<Self> {
        let (inputs, outputs, vb) = (layer.inputs, layer.outputs, vb.pp(layer.name));
        Ok(match layer.kind {
            LayerKind::Conv => Self::Conv(Conv2d::new(inputs, outputs, KERNEL, vb)?),
            LayerKind::Linear => Self::Linear(Linear::new(inputs, outputs, vb)?),
            LayerKind::Deconv => Self::Deconv(ConvTranspose2d::new(inputs, outputs, KERNEL, vb)?),
        })
    }

    /// Applies the layer (and its ReLU) to `x`, first flattening or reshaping `x` to the
    /// layer's input: `(B, features)` for a linear layer, `(B, channels, side, side)` for a
    /// convolution.
    fn forward(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let y = match self {
            Self::Linear(op) => op.forward(&x.flatten_from(1)?)?,
            Self::Conv(op) => op.forward(&x.reshape((b, layer.inputs, layer.side, layer.side))?)?,
            Self::Deconv(op) => op.forward(&x.reshape((b, layer.inputs, layer.side, layer.side))?)?,
        };
        Ok(if layer.relu { y.relu()? } else { y })
    }
}

/// The VAE: `enc` and `dec` as in the PyTorch module, one candle module per row of the
/// layer table ([`VaeConfig::layers`]).
#[derive(Debug, Clone)]
pub struct Vae {
    table: Layers<Layer>,
    ops: Layers<Op>,
    cfg: VaeConfig,
}

/// Output of [`Vae::forward`].
#[derive(Debug, Clone)]
pub struct VaeOutput {
    /// Reconstruction logits, `(B, C, H, W)`; `sigmoid` gives pixel probabilities.
    pub logits: Tensor,
    /// Posterior means, `(B, latent_dim)`.
    pub mu: Tensor,
    /// Posterior log-variances, `(B, latent_dim)`.
    pub logvar: Tensor,
}

impl Vae {
    /// Builds the model from `vb`, whose tensors are named `enc.*` and `dec.*`.
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let table = cfg.layers();
        let ops = table.try_map(|layer| Op::new(layer, &vb))?;
        Ok(Self { table, ops, cfg: cfg.clone() })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Posterior parameters `(mu, logvar)` of images `x` in `[0, 1]`, shape `(B, C, H, W)`.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.cfg.image_size;
        if (c, h, w) != (self.cfg.image_channels, s, s) {
            return Err(VaeError::Config(format!(
                "input images are {c}x{h}x{w}, the model expects {}x{s}x{s}",
                self.cfg.image_channels
            )));
        }
        let (t, o) = (&self.table, &self.ops);
        let mut h = x.clone();
        for (layer, op) in [(&t.conv1, &o.conv1), (&t.conv2, &o.conv2), (&t.enc_linear, &o.enc_linear)] {
            h = op.forward(layer, &h)?;
        }
        let h = o.enc_linear2.forward(&t.enc_linear2, &h)?;
        Ok((o.mu.forward(&t.mu, &h)?, o.var.forward(&t.var, &h)?))
    }

    /// Reconstruction logits for latent codes `z`, shape `(B, latent_dim)`.
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        let (t, o) = (&self.table, &self.ops);
        let mut h = z.clone();
        for (layer, op) in [
            (&t.dec_linear, &o.dec_linear),
            (&t.dec_linear2, &o.dec_linear2),
            (&t.dec_linear3, &o.dec_linear3),
            (&t.deconv1, &o.deconv1),
            (&t.deconv2, &o.deconv2),
        ] {
            h = op.forward(layer, &h)?;
        }
        Ok(h)
    }

    /// Pixel probabilities (sigmoid of the logits) for latent codes `z`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(&self.decode_logits(z)?)?)
    }

    /// Encodes `x`, samples `z = mu + eps · exp(logvar / 2)` with the caller's standard
    /// normal noise `eps` (shape `(B, latent_dim)`), and decodes `z` to logits.
    pub fn forward(&self, x: &Tensor, eps: &Tensor) -> Result<VaeOutput> {
        let (mu, logvar) = self.encode(x)?;
        let z = reparameterize(&mu, &logvar, eps)?;
        Ok(VaeOutput { logits: self.decode_logits(&z)?, mu, logvar })
    }
}

/// The reparameterised sample `z = mu + eps · exp(logvar / 2)`.
pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> Result<Tensor> {
    Ok((mu + eps.mul(&(logvar * 0.5)?.exp()?)?)?)
}

impl Vae {
    /// The test-set figures of both conventions from one encoding of `x`: the loss terms
    /// with `z` sampled with `eps` (the Monte-Carlo negative ELBO), and with `z = mu`
    /// (the posterior mean decoded, as PyTorch's `model.eval()` idiom reports it; its KL
    /// term is the same).
    pub fn loss_terms_both(&self, x: &Tensor, eps: &Tensor) -> Result<(LossTerms, LossTerms)> {
        let (mu, logvar) = self.encode(x)?;
        let sampled = VaeOutput { logits: self.decode_logits(&reparameterize(&mu, &logvar, eps)?)?, mu, logvar };
        let at_mean = VaeOutput { logits: self.decode_logits(&sampled.mu)?, ..sampled.clone() };
        Ok((self.loss_terms(&sampled, x)?, self.loss_terms(&at_mean, x)?))
    }

    /// [`loss_terms`] under the model's likelihood ([`VaeConfig::likelihood`]).
    pub fn loss_terms(&self, out: &VaeOutput, x: &Tensor) -> Result<LossTerms> {
        loss_terms_with(out, x, self.cfg.likelihood)
    }

    /// The same model under another likelihood (the weights do not record theirs).
    pub fn with_likelihood(mut self, likelihood: Likelihood) -> Self {
        self.cfg.likelihood = likelihood;
        self
    }
}

/// The two terms of the negative ELBO, each summed over the batch (so divide by the batch
/// size for per-image figures).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// The reconstruction term `−log p(x | z)`, summed over pixels and images: the binary
    /// cross-entropy for the Bernoulli, minus the log-normalisers for the continuous one.
    pub bce: Tensor,
    /// KL divergence of the posterior from N(0, I), summed over dimensions and images.
    pub kl: Tensor,
}

/// Computes the loss terms for targets `x` in `[0, 1]`.
///
/// BCE is computed from logits in the stable form
/// `max(l, 0) − l·x + log(1 + exp(−|l|))`, equal to PyTorch's
/// `binary_cross_entropy(sigmoid(l), x, reduction="sum")` without its clamping of
/// the log to −100; KL is `−½ Σ (1 + logvar − mu² − exp(logvar))`.
pub fn loss_terms(out: &VaeOutput, x: &Tensor) -> Result<LossTerms> {
    loss_terms_with(out, x, Likelihood::Bernoulli)
}

/// [`loss_terms`] under `likelihood`: for the continuous Bernoulli the reconstruction term
/// is the BCE minus `Σ log C(l)` ([`cb_log_normaliser`]).
pub fn loss_terms_with(out: &VaeOutput, x: &Tensor, likelihood: Likelihood) -> Result<LossTerms> {
    let bce = neg_log_likelihood(&out.logits, x, likelihood)?.sum_all()?;
    let kl_terms = ((out.logvar.exp()? + out.mu.sqr()?)? - &out.logvar)? - 1.0;
    let kl = (kl_terms?.sum_keepdim(D::Minus1)?.sum_all()? * 0.5)?;
    Ok(LossTerms { bce, kl })
}

/// Element-wise `−log p(x | l)` under `likelihood` (broadcasting `x` to `l`).
fn neg_log_likelihood(l: &Tensor, x: &Tensor, likelihood: Likelihood) -> Result<Tensor> {
    let bce = bce_with_logits(l, x)?;
    match likelihood {
        Likelihood::Bernoulli => Ok(bce),
        Likelihood::ContinuousBernoulli => Ok((bce - cb_log_normaliser_tensor(l)?)?),
    }
}

/// [`cb_log_normaliser`] element-wise on a tensor, differentiable: the Taylor series below
/// |l| = 0.01, the closed form (on |l| clamped to at least 0.01, so that the branch not
/// taken stays finite and its gradient zero) above.
fn cb_log_normaliser_tensor(l: &Tensor) -> Result<Tensor> {
    let a = l.abs()?;
    let u2 = (a.sqr()? * 0.25)?;
    let series = ((&u2 * (1.0 / 3.0))? - (u2.sqr()? * (7.0 / 90.0))?)? + std::f64::consts::LN_2;
    let far = a.maximum(1e-2)?;
    let e = far.neg()?.exp()?;
    let closed = ((far.log()? - e.affine(-1.0, 1.0)?.log()?)? + (e + 1.0)?.log()?)?;
    Ok(a.lt(1e-2)?.where_cond(&series?, &closed)?)
}

/// Element-wise binary cross-entropy of targets `x` under Bernoulli logits `l`, in the
/// stable form `max(l, 0) − l·x + log(1 + exp(−|l|))` (broadcasting `x` to `l`).
fn bce_with_logits(l: &Tensor, x: &Tensor) -> Result<Tensor> {
    let softplus = (l.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((l.relu()? - l.broadcast_mul(x)?)? + softplus)?)
}

/// Per-image bounds on `log p(x)` (nats) from `k` importance samples.
#[derive(Debug, Clone)]
pub struct LikelihoodBounds {
    /// The ELBO (k = 1 bound), averaged over the k samples: `(B,)`.
    pub elbo: Tensor,
    /// The importance-weighted bound `log (1/k) Σ p(x, z_i) / q(z_i | x)` (Burda et al.,
    /// 2015), tighter than the ELBO and tending to `log p(x)` as k grows: `(B,)`.
    pub iwae: Tensor,
}

/// Importance-weighted log-likelihood bounds of images `x` `(B, C, H, W)` with the
/// caller's standard normal noise `eps` `(k, B, latent_dim)`, decoding all `k · B` codes
/// in one pass (see [`log_importance_weights`] to bound the pass size).
pub fn likelihood_bounds(vae: &Vae, x: &Tensor, eps: &Tensor) -> Result<LikelihoodBounds> {
    let (mu, logvar) = vae.encode(x)?;
    bounds_from_log_weights(&log_importance_weights(vae, &mu, &logvar, x, eps)?)
}

/// The log importance weights `log p(x, z_i) − log q(z_i | x)`, `(k, B)`, of images `x`
/// `(B, C, H, W)` whose posterior is `(mu, logvar)`, at `z_i = mu + eps_i · σ` for the
/// caller's noise `eps` `(k, B, latent_dim)`. Each weight depends only on its own image
/// and noise, so the `k` samples may be split over several calls and concatenated.
pub fn log_importance_weights(vae: &Vae, mu: &Tensor, logvar: &Tensor, x: &Tensor, eps: &Tensor) -> Result<Tensor> {
    let (k, b, dim) = eps.dims3()?;
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let z = mu.unsqueeze(0)?.broadcast_add(&eps.broadcast_mul(&(logvar * 0.5)?.exp()?.unsqueeze(0)?)?)?;
    let logits = vae.decode_logits(&z.reshape((k * b, dim))?)?.reshape((k, b, ()))?;
    let x = x.reshape((1, b, ()))?;
    let log_px_z = neg_log_likelihood(&logits, &x, vae.config().likelihood)?.sum(2)?.neg()?;
    let log_pz = ((z.sqr()? + ln_2pi)?.sum(2)? * -0.5)?;
    let log_qz = ((eps.sqr()?.broadcast_add(&logvar.unsqueeze(0)?)? + ln_2pi)?.sum(2)? * -0.5)?;
    Ok(((log_px_z + log_pz)? - log_qz)?)
}

/// The ELBO and IWAE bounds from log importance weights `(k, B)`.
pub fn bounds_from_log_weights(log_w: &Tensor) -> Result<LikelihoodBounds> {
    let max = log_w.max_keepdim(0)?;
    let log_mean_w = ((log_w.broadcast_sub(&max)?.exp()?.mean_keepdim(0)?.log()? + max)?).squeeze(0)?;
    Ok(LikelihoodBounds { elbo: log_w.mean(0)?, iwae: log_mean_w })
}
