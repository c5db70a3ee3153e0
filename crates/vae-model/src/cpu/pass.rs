//! The forward and backward passes of the whole model over the buffers that
//! [`super::CpuStep`] keeps from call to call; [`Timings`] records the seconds of each part.

use std::time::Instant;

use super::bf16::Operands;
use super::conv::{conv_backward, conv_forward, deconv_backward, deconv_forward};
use super::kernels::{
    ImportanceSamples, Posterior, iw_loss_gradient, linear_backward, linear_forward, linear_input_gradient_add,
    loss_gradient, relu_mask,
};
use super::live::{LiveFeatures, Restrict, Side};
use super::sparse::SparseInput;
use super::{BatchLoss, Grads, Params};
use crate::{Layer, Layers, Likelihood};

const FORWARD: usize = 0;
const BACKWARD: usize = 1;

/// Seconds of the last call, `[forward, backward]`: per layer (its bias and ReLU, and the
/// masking of its input's gradient, included), and for the reparameterised sampling with
/// the loss.
#[derive(Debug, Clone, Default)]
pub(super) struct Timings {
    pub layers: Layers<[f64; 2]>,
    pub loss: [f64; 2],
}

/// Runs `f`, adding the seconds it took to `slot`.
fn timed<R>(slot: &mut f64, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let result = f();
    *slot += start.elapsed().as_secs_f64();
    result
}

/// Activations of the forward pass and gradients of the backward pass, `batch` rows each.
#[derive(Default)]
pub(super) struct Buffers {
    /// Every layer's output, after its ReLU: `mu` and `var` hold the posterior means and
    /// log-variances, `deconv2` the reconstruction logits.
    pub out: Layers<Vec<f32>>,
    /// The objective's gradient with respect to every layer's output.
    grad_out: Layers<Vec<f32>>,
    /// Posterior standard deviations, the sampled codes, and the codes' gradient.
    std: Vec<f32>,
    z: Vec<f32>,
    g_z: Vec<f32>,
    /// Room for the column-major products of [`linear_forward`].
    scratch: Vec<f32>,
    /// Each code's normalised importance weight over `B` (the importance-weighted
    /// objective only; empty for the VAE's).
    iw_weights: Vec<f32>,
    /// The live features of the second convolution's output, which the encoder's wide
    /// layer reads, and of the decoder's wide layer's output: in f32 those layers'
    /// products run on them only ([`LiveFeatures`]).
    conv2_live: LiveFeatures,
    dec_linear3_live: LiveFeatures,
    /// When the wide layers' f32 products run on the live features only (the tests
    /// force either path).
    pub restrict: Restrict,
    /// Room for the bf16 operands of the two wide layers' products, under
    /// [`super::Precision::Bf16`] (`None`: f32).
    pub bf16: Option<Operands>,
    /// Seconds per part of the last call.
    pub times: Timings,
}

impl Buffers {
    /// Sizes the buffers for `b` images, the first convolution's for `conv_rows`: those of
    /// the encoder, or with `samples` > 0 all, the decoder's for `samples` codes per image.
    pub fn resize(&mut self, t: &Layers<Layer>, b: usize, conv_rows: usize, samples: usize) {
        let encoder = [&t.conv2, &t.enc_linear, &t.enc_linear2, &t.mu, &t.var];
        self.out.conv1.resize(conv_rows * t.conv1.output_len(), 0.0);
        let o = &mut self.out;
        for (buf, layer) in
            [&mut o.conv2, &mut o.enc_linear, &mut o.enc_linear2, &mut o.mu, &mut o.var].into_iter().zip(encoder)
        {
            buf.resize(b * layer.output_len(), 0.0);
        }
        if samples == 0 {
            return;
        }
        let (rows, latent) = (b * samples, t.mu.outputs);
        let decoder = [&t.dec_linear, &t.dec_linear2, &t.dec_linear3, &t.deconv1, &t.deconv2];
        for (buf, layer) in [&mut o.dec_linear, &mut o.dec_linear2, &mut o.dec_linear3, &mut o.deconv1, &mut o.deconv2]
            .into_iter()
            .zip(decoder)
        {
            buf.resize(rows * layer.output_len(), 0.0);
        }
        let g = &mut self.grad_out;
        let encoder_grads = [&mut g.conv1, &mut g.conv2, &mut g.enc_linear, &mut g.enc_linear2, &mut g.mu, &mut g.var];
        for (buf, layer) in
            encoder_grads.into_iter().zip([&t.conv1, &t.conv2, &t.enc_linear, &t.enc_linear2, &t.mu, &t.var])
        {
            buf.resize(b * layer.output_len(), 0.0);
        }
        let decoder_grads = [&mut g.dec_linear, &mut g.dec_linear2, &mut g.dec_linear3, &mut g.deconv1, &mut g.deconv2];
        for (buf, layer) in decoder_grads.into_iter().zip(decoder) {
            buf.resize(rows * layer.output_len(), 0.0);
        }
        self.std.resize(b * latent, 0.0);
        for buf in [&mut self.z, &mut self.g_z] {
            buf.resize(rows * latent, 0.0);
        }
    }

    /// When the wide layer next to `relu` (whether a ReLU sits there) may run on the live
    /// features only: never in bf16 or without the ReLU.
    fn restrict(&self, relu: bool) -> Restrict {
        if self.bf16.is_none() && relu { self.restrict } else { Restrict::Never }
    }

    /// The encoder: `x` to `mu` and `logvar`, keeping what the backward pass needs. The
    /// convolutions run `conv_rows` images at a time (their buffers hold that many), the
    /// fully-connected layers on all `b` at once; with `sparse` (inference only: it keeps
    /// nothing for a backward pass), the first of them on the second convolution's
    /// non-zero outputs, in f32 under either precision (there it is faster than the dense
    /// bf16 product, and exact), if few enough of them are non-zero.
    pub fn encode(
        &mut self,
        t: &Layers<Layer>,
        (b, conv_rows): (usize, usize),
        w: &Layers<Params>,
        x: &[f32],
        sparse: Option<&mut SparseInput>,
    ) {
        let restrict = self.restrict(t.conv2.relu);
        let (o, tm) = (&mut self.out, &mut self.times.layers);
        let (pixels, flat) = (t.conv1.input_len(), t.conv2.output_len());
        for (x, a2) in x.chunks(conv_rows * pixels).zip(o.conv2.chunks_mut(conv_rows * flat)) {
            let n = x.len() / pixels;
            let a1 = &mut o.conv1[..n * t.conv1.output_len()];
            timed(&mut tm.conv1[FORWARD], || conv_forward(&t.conv1, x, w.conv1, a1));
            timed(&mut tm.conv2[FORWARD], || conv_forward(&t.conv2, a1, w.conv2, a2));
        }
        let (s, wide, live) = (&mut self.scratch, self.bf16.as_mut(), &mut self.conv2_live);
        timed(&mut tm.enc_linear[FORWARD], || {
            let (l, x, p, out) = (&t.enc_linear, &o.conv2, w.enc_linear, &mut o.enc_linear);
            if sparse.is_some_and(|sparse| sparse.forward(l, x, p, out, b)) {
                return;
            }
            if live.find(x, (l.inputs, Side::Input), restrict) {
                live.narrowing_forward(l, x, p, out, b);
            } else {
                linear_forward(l, x, p, out, (b, wide), s);
            }
        });
        timed(&mut tm.enc_linear2[FORWARD], || {
            linear_forward(&t.enc_linear2, &o.enc_linear, w.enc_linear2, &mut o.enc_linear2, (b, None), s)
        });
        timed(&mut tm.mu[FORWARD], || linear_forward(&t.mu, &o.enc_linear2, w.mu, &mut o.mu, (b, None), s));
        timed(&mut tm.var[FORWARD], || linear_forward(&t.var, &o.enc_linear2, w.var, &mut o.var, (b, None), s));
    }

    /// The whole model: `x` and the noise `eps` (`samples` rows per image, image-major) to
    /// the reconstruction logits of every sampled code.
    pub fn forward(
        &mut self,
        t: &Layers<Layer>,
        (b, samples): (usize, usize),
        w: &Layers<Params>,
        x: &[f32],
        eps: &[f32],
    ) {
        self.encode(t, (b, b), w, x, None);
        let (o, tm) = (&mut self.out, &mut self.times);
        let latent = t.mu.outputs;
        timed(&mut tm.loss[FORWARD], || {
            for (std, logvar) in self.std.iter_mut().zip(&o.var) {
                *std = (0.5 * logvar).exp();
            }
            for ((z, eps), r) in self.z.chunks_mut(latent).zip(eps.chunks(latent)).zip(0..) {
                let i = r / samples;
                let (mu, std) = (&o.mu[i * latent..(i + 1) * latent], &self.std[i * latent..(i + 1) * latent]);
                for (((z, eps), mu), std) in z.iter_mut().zip(eps).zip(mu).zip(std) {
                    *z = mu + eps * std;
                }
            }
        });
        self.decode(t, b * samples, w);
    }

    /// The decoder: the `rows` codes in `z` to the reconstruction logits in `out.deconv2`.
    pub fn decode(&mut self, t: &Layers<Layer>, b: usize, w: &Layers<Params>) {
        let (o, tm, s) = (&mut self.out, &mut self.times.layers, &mut self.scratch);
        timed(&mut tm.dec_linear[FORWARD], || {
            linear_forward(&t.dec_linear, &self.z, w.dec_linear, &mut o.dec_linear, (b, None), s)
        });
        timed(&mut tm.dec_linear2[FORWARD], || {
            linear_forward(&t.dec_linear2, &o.dec_linear, w.dec_linear2, &mut o.dec_linear2, (b, None), s)
        });
        let wide = self.bf16.as_mut();
        timed(&mut tm.dec_linear3[FORWARD], || {
            linear_forward(&t.dec_linear3, &o.dec_linear2, w.dec_linear3, &mut o.dec_linear3, (b, wide), s)
        });
        timed(&mut tm.deconv1[FORWARD], || deconv_forward(&t.deconv1, &o.dec_linear3, w.deconv1, &mut o.deconv1));
        timed(&mut tm.deconv2[FORWARD], || deconv_forward(&t.deconv2, &o.deconv1, w.deconv2, &mut o.deconv2));
    }

    /// The loss sums of the last [`Buffers::forward`] on `x`, and the gradients of
    /// `(BCE + kl_weight · KL) / B` with respect to the logits and, through the KL term, to
    /// the posterior's parameters.
    pub fn loss(&mut self, x: &[f32], b: usize, (likelihood, kl_weight): (Likelihood, f32)) -> BatchLoss {
        self.iw_weights.clear();
        let (o, g) = (&self.out, &mut self.grad_out);
        timed(&mut self.times.loss[FORWARD], || {
            let q = Posterior { mu: &o.mu, logvar: &o.var, std: &self.std, g_mu: &mut g.mu, g_logvar: &mut g.var };
            loss_gradient(&o.deconv2, x, &mut g.deconv2, q, b, (likelihood, kl_weight))
        })
    }

    /// Whether the last pass ran the two wide layers' products on the live features only
    /// (the encoder's, the decoder's).
    #[cfg(test)]
    pub fn restricted(&self) -> [bool; 2] {
        [self.conv2_live.is_active(), self.dec_linear3_live.is_active()]
    }

    /// The codes the decoder reads, `rows × latent_dim` (after [`Buffers::resize`]).
    pub fn codes(&mut self) -> &mut [f32] {
        &mut self.z
    }

    /// [`Buffers::loss`] for the importance-weighted objective over the `samples` codes
    /// of each image that the last [`Buffers::forward`] decoded from noise `eps`.
    pub fn importance_weighted_loss(
        &mut self,
        x: &[f32],
        (b, samples): (usize, usize),
        eps: &[f32],
        likelihood: Likelihood,
    ) -> BatchLoss {
        let (o, g) = (&self.out, &mut self.grad_out);
        let codes = ImportanceSamples { z: &self.z, eps, samples, weights: &mut self.iw_weights };
        timed(&mut self.times.loss[FORWARD], || {
            let q = Posterior { mu: &o.mu, logvar: &o.var, std: &self.std, g_mu: &mut g.mu, g_logvar: &mut g.var };
            iw_loss_gradient(&o.deconv2, x, &mut g.deconv2, q, codes, (b, likelihood))
        })
    }

    /// The backward pass from the gradients [`Buffers::loss`] left, for the images `x` and
    /// noise `eps` of the last [`Buffers::forward`]: every parameter's gradient into `grads`.
    pub fn backward(
        &mut self,
        t: &Layers<Layer>,
        (b, samples): (usize, usize),
        w: &Layers<Params>,
        (x, eps): (&[f32], &[f32]),
        grads: &mut Layers<Grads>,
    ) {
        let restrict = self.restrict(t.dec_linear3.relu);
        let (o, g, tm) = (&self.out, &mut self.grad_out, &mut self.times);
        let (rows, latent) = (b * samples, t.mu.outputs);
        timed(&mut tm.layers.deconv2[BACKWARD], || {
            deconv_backward(&t.deconv2, &g.deconv2, &o.deconv1, w.deconv2.weight, &mut grads.deconv2, &mut g.deconv1);
        });
        timed(&mut tm.layers.deconv1[BACKWARD], || {
            let (g_out, g_in) = (&g.deconv1, &mut g.dec_linear3);
            deconv_backward(&t.deconv1, g_out, &o.dec_linear3, w.deconv1.weight, &mut grads.deconv1, g_in);
        });
        timed(&mut tm.layers.dec_linear3[BACKWARD], || {
            let (g_out, g_in, live) = (&g.dec_linear3, &mut g.dec_linear2, &mut self.dec_linear3_live);
            let (x, weight, grads) = (&o.dec_linear2, w.dec_linear3.weight, &mut grads.dec_linear3);
            if live.find(&o.dec_linear3, (t.dec_linear3.outputs, Side::Output), restrict) {
                live.widening_backward(g_out, (x, weight), grads, g_in, rows);
            } else {
                linear_backward(g_out, x, weight, grads, Some(g_in), (rows, self.bf16.as_mut()));
            }
            relu_mask(g_in, &o.dec_linear2);
        });
        timed(&mut tm.layers.dec_linear2[BACKWARD], || {
            let (g_out, g_in) = (&g.dec_linear2, &mut g.dec_linear);
            linear_backward(
                g_out,
                &o.dec_linear,
                w.dec_linear2.weight,
                &mut grads.dec_linear2,
                Some(g_in),
                (rows, None),
            );
            relu_mask(g_in, &o.dec_linear);
        });
        timed(&mut tm.layers.dec_linear[BACKWARD], || {
            let g_z = Some(&mut self.g_z[..]);
            linear_backward(&g.dec_linear, &self.z, w.dec_linear.weight, &mut grads.dec_linear, g_z, (rows, None));
        });
        timed(&mut tm.loss[BACKWARD], || {
            // The importance-weighted objective's prior term, −w̃ log p(z) / B, on each code.
            for ((g_z, z), weight) in self.g_z.chunks_mut(latent).zip(self.z.chunks(latent)).zip(&self.iw_weights) {
                for (g_z, z) in g_z.iter_mut().zip(z) {
                    *g_z += weight * z;
                }
            }
            // Through z = mu + eps · exp(logvar / 2), summed over each image's samples.
            for ((g_z, eps), r) in self.g_z.chunks(latent).zip(eps.chunks(latent)).zip(0..) {
                let i = r / samples;
                let at = i * latent..(i + 1) * latent;
                let (g_mu, g_logvar, std) = (&mut g.mu[at.clone()], &mut g.var[at.clone()], &self.std[at]);
                for ((((g_mu, g_logvar), g_z), eps), std) in g_mu.iter_mut().zip(g_logvar).zip(g_z).zip(eps).zip(std) {
                    *g_mu += g_z;
                    *g_logvar += g_z * eps * 0.5 * std;
                }
            }
        });
        timed(&mut tm.layers.mu[BACKWARD], || {
            linear_backward(&g.mu, &o.enc_linear2, w.mu.weight, &mut grads.mu, Some(&mut g.enc_linear2), (b, None));
        });
        timed(&mut tm.layers.var[BACKWARD], || {
            linear_backward(&g.var, &o.enc_linear2, w.var.weight, &mut grads.var, None, (b, None));
            // The var layer's input gradient adds into the mu layer's.
            linear_input_gradient_add(&g.var, w.var.weight, &mut g.enc_linear2, b);
            relu_mask(&mut g.enc_linear2, &o.enc_linear2);
        });
        timed(&mut tm.layers.enc_linear2[BACKWARD], || {
            let (g_out, g_in) = (&g.enc_linear2, &mut g.enc_linear);
            linear_backward(g_out, &o.enc_linear, w.enc_linear2.weight, &mut grads.enc_linear2, Some(g_in), (b, None));
            relu_mask(g_in, &o.enc_linear);
        });
        timed(&mut tm.layers.enc_linear[BACKWARD], || {
            let (g_out, g_in, grads) = (&g.enc_linear, &mut g.conv2, &mut grads.enc_linear);
            if self.conv2_live.is_active() {
                self.conv2_live.narrowing_backward(g_out, grads, g_in, b);
            } else {
                linear_backward(g_out, &o.conv2, w.enc_linear.weight, grads, Some(g_in), (b, self.bf16.as_mut()));
            }
            relu_mask(g_in, &o.conv2);
        });
        timed(&mut tm.layers.conv2[BACKWARD], || {
            let (g_out, g_in) = (&g.conv2, &mut g.conv1);
            conv_backward(&t.conv2, g_out, &o.conv1, w.conv2.weight, &mut grads.conv2, Some(g_in));
        });
        timed(&mut tm.layers.conv1[BACKWARD], || {
            conv_backward(&t.conv1, &g.conv1, x, w.conv1.weight, &mut grads.conv1, None);
        });
    }
}
