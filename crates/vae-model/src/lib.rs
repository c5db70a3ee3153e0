//! The convolutional VAE of the seed experiment, in [candle].
//!
//! Architecture (ReLU after every hidden layer):
//!
//! ```text
//! Encoder  conv1 Conv2d(1,16,3) → conv2 Conv2d(16,32,3) → flatten 18432
//!          → linear 18432→512 → linear2 512→256 → mu 256→10, var 256→10 (log-variance)
//! Decoder  linear 10→256 → linear2 256→512 → linear3 512→18432 → reshape (32,24,24)
//!          → deconv1 ConvTranspose2d(32,16,3) → deconv2 ConvTranspose2d(16,1,3) → sigmoid
//! ```
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

pub mod cpu;
mod error;
mod layers;
pub mod machine;
mod weights;

use candle_core::{D, Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use cpu::{BatchLoss, CpuStep};
pub use error::{Result, VaeError};
pub use layers::{Conv2d, ConvTranspose2d, Linear, col2im_add, im2col};
pub use weights::{
    ParamSpec, init_varmap, load_vae, load_varmap, parameter_specs, read_tensors, save_tensors, take_tensor,
    varmap_tensors,
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

/// Shape of the model. The defaults are the seed experiment's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VaeConfig {
    /// Dimension of the latent space (10 in the seed).
    pub latent_dim: usize,
    /// Channels of the input images (1 for MNIST).
    pub image_channels: usize,
    /// Height and width of the (square) input images (28 for MNIST).
    pub image_size: usize,
    /// Output channels of the two 3×3 convolutions.
    pub conv_channels: [usize; 2],
    /// Widths of the two hidden fully-connected layers.
    pub hidden: [usize; 2],
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self { latent_dim: 10, image_channels: 1, image_size: 28, conv_channels: [16, 32], hidden: [512, 256] }
    }
}

/// Side length of every convolution kernel.
pub const KERNEL: usize = 3;

impl VaeConfig {
    /// Side of the feature map after the two unpadded 3×3 convolutions (24 for 28).
    pub fn feature_side(&self) -> usize {
        self.image_size - 2 * (KERNEL - 1)
    }

    /// Width of the flattened feature map (18432 for the seed).
    pub fn flat_features(&self) -> usize {
        self.conv_channels[1] * self.feature_side() * self.feature_side()
    }

    /// Number of pixel values in one image.
    pub fn pixels(&self) -> usize {
        self.image_channels * self.image_size * self.image_size
    }

    /// Checks that the sizes are usable (an image large enough for two convolutions,
    /// no zero widths).
    pub fn validate(&self) -> Result<()> {
        let widths = [self.latent_dim, self.image_channels, self.conv_channels[0], self.conv_channels[1]];
        if widths.contains(&0) || self.hidden.contains(&0) || self.image_size < 2 * KERNEL - 1 {
            return Err(VaeError::Config(format!("unusable model sizes: {self:?}")));
        }
        Ok(())
    }
}

/// The encoder: two convolutions and three fully-connected layers to (mu, logvar).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv1: Conv2d,
    conv2: Conv2d,
    linear: Linear,
    linear2: Linear,
    mu: Linear,
    var: Linear,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let [c1, c2] = cfg.conv_channels;
        let [h1, h2] = cfg.hidden;
        Ok(Self {
            conv1: Conv2d::new(cfg.image_channels, c1, KERNEL, vb.pp("conv1"))?,
            conv2: Conv2d::new(c1, c2, KERNEL, vb.pp("conv2"))?,
            linear: Linear::new(cfg.flat_features(), h1, vb.pp("linear"))?,
            linear2: Linear::new(h1, h2, vb.pp("linear2"))?,
            mu: Linear::new(h2, cfg.latent_dim, vb.pp("mu"))?,
            var: Linear::new(h2, cfg.latent_dim, vb.pp("var"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.conv1.forward(x)?.relu()?;
        let h = self.conv2.forward(&h)?.relu()?.flatten_from(1)?;
        let h = self.linear.forward(&h)?.relu()?;
        let h = self.linear2.forward(&h)?.relu()?;
        Ok((self.mu.forward(&h)?, self.var.forward(&h)?))
    }
}

/// The decoder: three fully-connected layers and two transposed convolutions.
#[derive(Debug, Clone)]
pub struct Decoder {
    linear: Linear,
    linear2: Linear,
    linear3: Linear,
    deconv1: ConvTranspose2d,
    deconv2: ConvTranspose2d,
    feature_shape: (usize, usize, usize),
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let [c1, c2] = cfg.conv_channels;
        let [h1, h2] = cfg.hidden;
        Ok(Self {
            linear: Linear::new(cfg.latent_dim, h2, vb.pp("linear"))?,
            linear2: Linear::new(h2, h1, vb.pp("linear2"))?,
            linear3: Linear::new(h1, cfg.flat_features(), vb.pp("linear3"))?,
            deconv1: ConvTranspose2d::new(c2, c1, KERNEL, vb.pp("deconv1"))?,
            deconv2: ConvTranspose2d::new(c1, cfg.image_channels, KERNEL, vb.pp("deconv2"))?,
            feature_shape: (c2, cfg.feature_side(), cfg.feature_side()),
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.linear.forward(z)?.relu()?;
        let h = self.linear2.forward(&h)?.relu()?;
        let h = self.linear3.forward(&h)?.relu()?;
        let (c, s1, s2) = self.feature_shape;
        let h = h.reshape((h.dim(0)?, c, s1, s2))?;
        let h = self.deconv1.forward(&h)?.relu()?;
        Ok(self.deconv2.forward(&h)?)
    }
}

/// The VAE: `enc` and `dec` as in the PyTorch module.
#[derive(Debug, Clone)]
pub struct Vae {
    enc: Encoder,
    dec: Decoder,
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
        Ok(Self { enc: Encoder::new(cfg, vb.pp("enc"))?, dec: Decoder::new(cfg, vb.pp("dec"))?, cfg: cfg.clone() })
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
        self.enc.forward(x)
    }

    /// Reconstruction logits for latent codes `z`, shape `(B, latent_dim)`.
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        self.dec.forward(z)
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
        Ok((loss_terms(&sampled, x)?, loss_terms(&at_mean, x)?))
    }
}

/// The two terms of the negative ELBO, each summed over the batch (so divide by the batch
/// size for per-image figures).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// Binary cross-entropy of the reconstruction, summed over pixels and images.
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
    let bce = bce_with_logits(&out.logits, x)?.sum_all()?;
    let kl_terms = ((out.logvar.exp()? + out.mu.sqr()?)? - &out.logvar)? - 1.0;
    let kl = (kl_terms?.sum_keepdim(D::Minus1)?.sum_all()? * 0.5)?;
    Ok(LossTerms { bce, kl })
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
    let log_px_z = bce_with_logits(&logits, &x.reshape((1, b, ()))?)?.sum(2)?.neg()?;
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
