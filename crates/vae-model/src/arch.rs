//! The model's shape, written once: [`VaeConfig`] holds the sizes a user may change and
//! [`VaeConfig::layers`] is the layer table, from which everything else is derived — the
//! candle graph ([`crate::Vae`]), the parameter list ([`crate::parameter_specs`]), the CPU
//! step's buffers and products ([`crate::CpuStep`]) and the FLOP counts of the benches.

use crate::{Likelihood, Result, VaeError};

/// Side length of every convolution kernel.
pub const KERNEL: usize = 3;

/// Shape of the model. The defaults are the reference experiment's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VaeConfig {
    /// Dimension of the latent space (10 in the reference experiment).
    pub latent_dim: usize,
    /// Channels of the input images (1 for MNIST).
    pub image_channels: usize,
    /// Height and width of the (square) input images (28 for MNIST).
    pub image_size: usize,
    /// Output channels of the two 3×3 convolutions.
    pub conv_channels: [usize; 2],
    /// Widths of the two hidden fully-connected layers.
    pub hidden: [usize; 2],
    /// What the decoder's logits are the parameters of (the reference's Bernoulli by
    /// default; absent from configurations written before it existed).
    #[serde(default)]
    pub likelihood: Likelihood,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            latent_dim: 10,
            image_channels: 1,
            image_size: 28,
            conv_channels: [16, 32],
            hidden: [512, 256],
            likelihood: Likelihood::Bernoulli,
        }
    }
}

/// What a layer computes. Convolutions are [`KERNEL`]×[`KERNEL`], stride 1, unpadded, with
/// PyTorch's weight layouts: Conv2d `(out, in, k, k)`, ConvTranspose2d `(in, out, k, k)`,
/// Linear `(out, in)`; every layer has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `Conv2d(inputs, outputs, k)`.
    Conv,
    /// `Linear(inputs, outputs)`.
    Linear,
    /// `ConvTranspose2d(inputs, outputs, k)`.
    Deconv,
}

/// One layer of the table, with its sizes for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// Prefix of its parameters in PyTorch's `state_dict`, e.g. `enc.conv1`.
    pub name: &'static str,
    /// What it computes.
    pub kind: LayerKind,
    /// Input channels (convolutions) or features (linear).
    pub inputs: usize,
    /// Output channels (convolutions) or features (linear).
    pub outputs: usize,
    /// Side of its square input (convolutions; 1 for a linear layer).
    pub side: usize,
    /// Whether a ReLU follows it.
    pub relu: bool,
}

impl Layer {
    /// Side of its square output.
    pub fn output_side(&self) -> usize {
        match self.kind {
            LayerKind::Conv => self.side + 1 - KERNEL,
            LayerKind::Deconv => self.side + KERNEL - 1,
            LayerKind::Linear => 1,
        }
    }

    /// Values of one image's input.
    pub fn input_len(&self) -> usize {
        self.inputs * self.side * self.side
    }

    /// Values of one image's output.
    pub fn output_len(&self) -> usize {
        self.outputs * self.output_side() * self.output_side()
    }

    /// Shape of the weight, in PyTorch's layout.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind {
            LayerKind::Conv => vec![self.outputs, self.inputs, KERNEL, KERNEL],
            LayerKind::Deconv => vec![self.inputs, self.outputs, KERNEL, KERNEL],
            LayerKind::Linear => vec![self.outputs, self.inputs],
        }
    }

    /// Fan-in by PyTorch's rule (dimension 1 of the weight times the kernel area), which
    /// sets the default initialisation bound `1/sqrt(fan_in)`.
    pub fn fan_in(&self) -> usize {
        let shape = self.weight_shape();
        shape[1..].iter().product()
    }

    /// Multiply-adds of its forward pass for one image.
    pub fn multiply_adds(&self) -> usize {
        let kk = KERNEL * KERNEL;
        match self.kind {
            LayerKind::Conv => self.outputs * self.inputs * kk * self.output_side().pow(2),
            LayerKind::Deconv => self.inputs * self.outputs * kk * self.side * self.side,
            LayerKind::Linear => self.inputs * self.outputs,
        }
    }
}

/// One value per layer of the model, by role: the layer table itself
/// ([`VaeConfig::layers`]), or each layer's parameters, buffers or timings. Fields are
/// reached by name, never by position; [`Layers::all`] lists them in `state_dict` order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layers<T> {
    /// `enc.conv1`.
    pub conv1: T,
    /// `enc.conv2`.
    pub conv2: T,
    /// `enc.linear`.
    pub enc_linear: T,
    /// `enc.linear2`.
    pub enc_linear2: T,
    /// `enc.mu`: the posterior mean.
    pub mu: T,
    /// `enc.var`: the posterior log-variance.
    pub var: T,
    /// `dec.linear`.
    pub dec_linear: T,
    /// `dec.linear2`.
    pub dec_linear2: T,
    /// `dec.linear3`.
    pub dec_linear3: T,
    /// `dec.deconv1`.
    pub deconv1: T,
    /// `dec.deconv2`: the reconstruction logits.
    pub deconv2: T,
}

impl<T> Layers<T> {
    /// Every value, in `state_dict` order.
    pub fn all(&self) -> [&T; 11] {
        [
            &self.conv1,
            &self.conv2,
            &self.enc_linear,
            &self.enc_linear2,
            &self.mu,
            &self.var,
            &self.dec_linear,
            &self.dec_linear2,
            &self.dec_linear3,
            &self.deconv1,
            &self.deconv2,
        ]
    }

    /// Every value, mutably, in `state_dict` order.
    pub fn all_mut(&mut self) -> [&mut T; 11] {
        [
            &mut self.conv1,
            &mut self.conv2,
            &mut self.enc_linear,
            &mut self.enc_linear2,
            &mut self.mu,
            &mut self.var,
            &mut self.dec_linear,
            &mut self.dec_linear2,
            &mut self.dec_linear3,
            &mut self.deconv1,
            &mut self.deconv2,
        ]
    }

    /// `f` applied to every value, field by field; the first error stops it.
    pub fn try_map<'a, U, E>(
        &'a self,
        mut f: impl FnMut(&'a T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Layers<U>, E> {
        Ok(Layers {
            conv1: f(&self.conv1)?,
            conv2: f(&self.conv2)?,
            enc_linear: f(&self.enc_linear)?,
            enc_linear2: f(&self.enc_linear2)?,
            mu: f(&self.mu)?,
            var: f(&self.var)?,
            dec_linear: f(&self.dec_linear)?,
            dec_linear2: f(&self.dec_linear2)?,
            dec_linear3: f(&self.dec_linear3)?,
            deconv1: f(&self.deconv1)?,
            deconv2: f(&self.deconv2)?,
        })
    }

    /// `f` applied to every value, field by field.
    pub fn map<'a, U>(&'a self, mut f: impl FnMut(&'a T) -> U) -> Layers<U> {
        self.try_map(|v| Ok::<U, std::convert::Infallible>(f(v))).unwrap_or_else(|never| match never {})
    }
}

impl VaeConfig {
    /// The layer table: every layer with its sizes, ReLU after every hidden layer.
    ///
    /// ```text
    /// Encoder  conv1 Conv2d(1,16,3) → conv2 Conv2d(16,32,3) → flatten 18432
    ///          → linear 18432→512 → linear2 512→256 → mu 256→10, var 256→10 (log-variance)
    /// Decoder  linear 10→256 → linear2 256→512 → linear3 512→18432 → reshape (32,24,24)
    ///          → deconv1 ConvTranspose2d(32,16,3) → deconv2 ConvTranspose2d(16,1,3) → logits
    /// ```
    pub fn layers(&self) -> Layers<Layer> {
        let [c1, c2] = self.conv_channels;
        let [h1, h2] = self.hidden;
        let (ch, z, s0) = (self.image_channels, self.latent_dim, self.image_size);
        let (s1, s2) = (s0 + 1 - KERNEL, s0 + 2 - 2 * KERNEL);
        let layer = |name, kind, inputs, outputs, side, relu| Layer { name, kind, inputs, outputs, side, relu };
        let linear = |name, inputs, outputs, relu| layer(name, LayerKind::Linear, inputs, outputs, 1, relu);
        let flat = c2 * s2 * s2;
        Layers {
            conv1: layer("enc.conv1", LayerKind::Conv, ch, c1, s0, true),
            conv2: layer("enc.conv2", LayerKind::Conv, c1, c2, s1, true),
            enc_linear: linear("enc.linear", flat, h1, true),
            enc_linear2: linear("enc.linear2", h1, h2, true),
            mu: linear("enc.mu", h2, z, false),
            var: linear("enc.var", h2, z, false),
            dec_linear: linear("dec.linear", z, h2, true),
            dec_linear2: linear("dec.linear2", h2, h1, true),
            dec_linear3: linear("dec.linear3", h1, flat, true),
            deconv1: layer("dec.deconv1", LayerKind::Deconv, c2, c1, s2, true),
            deconv2: layer("dec.deconv2", LayerKind::Deconv, c1, ch, s1, false),
        }
    }

    /// Width of the flattened feature map between the convolutions and the
    /// fully-connected layers (18432 for the reference's sizes).
    pub fn flat_features(&self) -> usize {
        self.layers().conv2.output_len()
    }

    /// Number of pixel values in one image.
    pub fn pixels(&self) -> usize {
        self.image_channels * self.image_size * self.image_size
    }

    /// Multiply-adds of one image's forward pass, all layers.
    pub fn forward_multiply_adds(&self) -> usize {
        self.layers().all().iter().map(|l| l.multiply_adds()).sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each layer takes what the one before it gives, for the reference's sizes and others.
    #[test]
    fn layers_chain_into_each_other() {
        let other =
            VaeConfig { latent_dim: 3, image_size: 12, conv_channels: [4, 6], hidden: [24, 12], ..Default::default() };
        for cfg in [VaeConfig::default(), other] {
            let l = cfg.layers();
            let chains = [
                vec![&l.conv1, &l.conv2, &l.enc_linear, &l.enc_linear2, &l.mu],
                vec![&l.enc_linear2, &l.var],
                vec![&l.dec_linear, &l.dec_linear2, &l.dec_linear3, &l.deconv1, &l.deconv2],
            ];
            for chain in chains {
                for pair in chain.windows(2) {
                    assert_eq!(pair[0].output_len(), pair[1].input_len(), "{} → {}", pair[0].name, pair[1].name);
                }
            }
            assert_eq!((l.conv1.input_len(), l.deconv2.output_len()), (cfg.pixels(), cfg.pixels()));
            assert_eq!((l.mu.output_len(), l.dec_linear.input_len()), (cfg.latent_dim, cfg.latent_dim));
            let names: Vec<_> = l.all().iter().map(|l| l.name).collect();
            assert_eq!(names.len(), names.iter().collect::<std::collections::HashSet<_>>().len(), "names are unique");
        }
        // The reference's: 18432 features and the multiply-adds of the benches' earlier literal.
        let seed = VaeConfig::default();
        assert_eq!(seed.flat_features(), 18432);
        let literal = 16 * 9 * 676 + 32 * 144 * 576 + 18432 * 512 + 512 * 256 + 2 * 256 * 10;
        let literal = literal + 10 * 256 + 256 * 512 + 512 * 18432 + 32 * 16 * 9 * 576 + 16 * 9 * 676;
        assert_eq!(seed.forward_multiply_adds(), literal);
    }
}
