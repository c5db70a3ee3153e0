//! Adam with PyTorch's semantics, updating parameters in place in one fused pass.
//!
//! candle-nn's `AdamW` keeps its moments private (so they cannot be checkpointed) and
//! spends about ten tensor operations, each allocating, per parameter per step; for a
//! 19 M-parameter model at small batches that costs as much as the model itself. Here the
//! moments are plain vectors and each step is one parallel loop over
//! `(param, grad, m, v)`.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::ema::{self, Ema};
use crate::{Result, TrainError};

/// Adam's hyper-parameters (PyTorch defaults apart from the learning rate).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// The optimiser: parameters by name, with their first and second moments.
pub struct Adam {
    params: Vec<(String, Var)>,
    moments: Vec<Mutex<Moments>>,
    step: u64,
    cfg: AdamConfig,
}

/// First and second moment estimates of one parameter.
#[derive(Debug, Clone, Default)]
pub struct Moments {
    /// First moment (mean of gradients).
    pub m: Vec<f32>,
    /// Second moment (mean of squared gradients).
    pub v: Vec<f32>,
}

impl Adam {
    /// A fresh optimiser (zero moments, step 0) over `params`, sorted by name.
    pub fn new(mut params: Vec<(String, Var)>, cfg: AdamConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = params
            .iter()
            .map(|(_, p)| {
                let n = p.elem_count();
                Mutex::new(Moments { m: written_zeros(n), v: written_zeros(n) })
            })
            .collect();
        Self { params, moments, step: 0, cfg }
    }

    /// Sets the learning rate of the following steps (for a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Parameter names, in the optimiser's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// The moments of parameter `i` (in [`Adam::names`] order).
    pub fn moments(&self, i: usize) -> Result<Moments> {
        Ok(self.moments[i].lock().map_err(|_| MOMENTS_POISONED)?.clone())
    }

    /// Restores the step count and moments saved from an optimiser over the same
    /// parameters; `moments` is in [`Adam::names`] order.
    pub fn restore(&mut self, step: u64, moments: Vec<Moments>) -> Result<()> {
        let mismatch = |detail| TrainError::StateMismatch { what: "optimiser state", detail };
        if moments.len() != self.params.len() {
            return Err(mismatch(format!("{} tensors, expected {}", moments.len(), self.params.len())));
        }
        for ((name, p), (slot, state)) in self.params.iter().zip(self.moments.iter().zip(moments)) {
            if state.m.len() != p.elem_count() || state.v.len() != p.elem_count() {
                return Err(mismatch(format!("{name} has the wrong size")));
            }
            *slot.lock().map_err(|_| MOMENTS_POISONED)? = state;
        }
        self.step = step;
        Ok(())
    }

    /// One Adam step from the gradients in `grads`; parameters without a gradient keep
    /// their value (their moments still decay, as in PyTorch only when a gradient
    /// exists — so they are skipped entirely). With `average`, the weight average (made
    /// over the same parameters) is updated from the new values in the same pass.
    pub fn step(&mut self, grads: &GradStore, average: Option<&mut Ema>) -> Result<()> {
        self.update(|_, p| grads.get(p.as_tensor()).map(Grad::Tensor), average, false)
    }

    /// [`Adam::step`] with the gradients as flat slices by parameter name (as
    /// [`CpuStep`](vae_model::CpuStep) leaves them).
    pub fn step_with<'g>(&mut self, grad: impl Fn(&str) -> Option<&'g [f32]>, average: Option<&mut Ema>) -> Result<()> {
        self.update(|name, _| grad(name).map(Grad::Slice), average, false)
    }

    /// The update; CPU tensors are updated in place by the fused op unless
    /// `force_host`, other devices (CUDA) through a copy on the host, where the moments
    /// live. The average's update reads each chunk of new values right after the chunk
    /// is written, while it is still in the core's cache: a third less memory traffic than
    /// a pass of its own ([`Ema::update`]), the same bits.
    fn update<'g>(
        &mut self,
        grad_of: impl Fn(&str, &Var) -> Option<Grad<'g>>,
        average: Option<&mut Ema>,
        force_host: bool,
    ) -> Result<()> {
        let (decay, mut shadows) = match average {
            Some(average) => {
                let (decay, shadows) = average.next_update(self.params.iter().map(|(name, _)| name.as_str()))?;
                (decay, shadows.into_iter().map(Some).collect())
            }
            None => (0.0, self.params.iter().map(|_| None).collect::<Vec<_>>()),
        };
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.cfg.beta1.powi(t);
        let bias2 = 1.0 - self.cfg.beta2.powi(t);
        for (((name, param), moments), shadow) in self.params.iter().zip(&self.moments).zip(shadows.iter_mut()) {
            let Some(grad) = grad_of(name, param) else {
                if let Some(shadow) = shadow {
                    let values = param.flatten_all()?.to_vec1::<f32>()?;
                    ema::blend(shadow, &values, decay);
                }
                continue;
            };
            let update = AdamUpdate {
                moments,
                average: shadow.take().map(|shadow| (Mutex::new(shadow), decay)),
                beta1: self.cfg.beta1 as f32,
                beta2: self.cfg.beta2 as f32,
                step_size: (self.cfg.lr / bias1) as f32,
                bias2_sqrt: bias2.sqrt() as f32,
                eps: self.cfg.eps as f32,
            };
            match grad {
                Grad::Tensor(grad) if param.device().is_cpu() && !force_host => {
                    param.as_tensor().inplace_op2(grad, &update)?
                }
                Grad::Slice(grad) if param.device().is_cpu() && !force_host => {
                    param.as_tensor().inplace_op1(&SliceUpdate { update, grad })?
                }
                grad => {
                    let mut values = param.flatten_all()?.to_vec1::<f32>()?;
                    match grad {
                        Grad::Tensor(g) => update.apply(&mut values, &g.flatten_all()?.to_vec1::<f32>()?)?,
                        Grad::Slice(g) => update.apply(&mut values, g)?,
                    }
                    param.set(&Tensor::from_vec(values, param.shape(), param.device())?)?;
                }
            }
        }
        Ok(())
    }
}

/// A parameter's gradient: a tensor from candle's autograd or a slice from the CPU step.
enum Grad<'a> {
    Tensor(&'a Tensor),
    Slice(&'a [f32]),
}

/// [`AdamUpdate`] from a gradient slice, as an in-place op on the parameter.
struct SliceUpdate<'a> {
    update: AdamUpdate<'a>,
    grad: &'a [f32],
}

impl candle_core::InplaceOp1 for SliceUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), Some((p0, p1))) = (p, pl.contiguous_offsets()) else {
            candle_core::bail!("adam-update: parameters must be contiguous f32 tensors");
        };
        self.update.apply(&mut p[p0..p1], self.grad)
    }
}

/// The in-place update of one parameter tensor from its gradient.
struct AdamUpdate<'a> {
    moments: &'a Mutex<Moments>,
    /// The parameter's averaged values and the decay of their update, if averaged.
    average: Option<(Mutex<&'a mut [f32]>, f32)>,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

impl candle_core::InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(&self, p: &mut CpuStorage, pl: &Layout, g: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (p, g) else {
            candle_core::bail!("adam-update: only f32 parameters are supported");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("adam-update: parameters and gradients must be contiguous");
        };
        self.apply(&mut p[p0..p1], &g[g0..g1])
    }
}

impl AdamUpdate<'_> {
    /// Updates parameter values `p` from gradient `g` and the moments, in parallel chunks.
    fn apply(&self, p: &mut [f32], g: &[f32]) -> candle_core::Result<()> {
        let mut moments = self.moments.lock().map_err(|_| candle_core::Error::wrap(MOMENTS_POISONED))?;
        let Moments { m, v } = &mut *moments;
        let mut average = match &self.average {
            Some((shadow, decay)) => {
                Some((shadow.lock().map_err(|_| candle_core::Error::wrap(AVERAGE_POISONED))?, *decay))
            }
            None => None,
        };
        if p.len() != g.len() || p.len() != m.len() || average.as_ref().is_some_and(|(s, _)| s.len() != p.len()) {
            candle_core::bail!("adam-update: size mismatch");
        }
        const CHUNK: usize = 1 << 14;
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA, checked above.
                return unsafe { self.chunk_avx2(p, g, m, v) };
            }
            self.chunk(p, g, m, v)
        };
        let chunks =
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)));
        match average.as_mut() {
            None => chunks.for_each(|((p, g), (m, v))| update(p, g, m, v)),
            Some((shadow, decay)) => chunks.zip(shadow.par_chunks_mut(CHUNK)).for_each(|(((p, g), (m, v)), shadow)| {
                update(p, g, m, v);
                ema::blend(shadow, p, *decay);
            }),
        }
        Ok(())
    }

    /// [`Self::chunk`] compiled for AVX2 and FMA: eight lanes per square root and
    /// division instead of four (timings in BENCHMARKS.md), and bit-identical (Rust
    /// never fuses a multiply and an add on its own).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn chunk_avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.chunk(p, g, m, v)
    }

    /// PyTorch's Adam update of one chunk of parameters `p` from their gradients `g` and
    /// moments `m`, `v` (all the same length), with one departure: a moment that falls
    /// below the smallest normal f32 (1.2e-38) is set to zero. The weights a ReLU never
    /// lets a gradient reach keep decaying moments, `0.9ⁿ · m`, which spend about 150
    /// steps among the subnormal numbers; Intel cores compute on those through microcode
    /// assists, and after one epoch more than half of the wide layers' first moments were
    /// subnormal, making every later batch-128 epoch 40 % slower on an Intel Xeon. The
    /// update such a moment would make, below 1e-30 · lr, changes no weight above 1e-22.
    #[inline(always)]
    fn chunk(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let normal = |x: f32| if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = normal(self.beta1 * *m + (1.0 - self.beta1) * g);
            *v = normal(self.beta2 * *v + (1.0 - self.beta2) * g * g);
            let denom = v.sqrt() / self.bias2_sqrt + self.eps;
            *p -= self.step_size * *m / denom;
        }
    }
}

/// `n` zeros, written rather than mapped: `vec![0.0; n]` leaves a large vector on the
/// kernel's shared zero page, so that the first step, which reads each moment before
/// writing it, copied every page on write, each copy flushing the other core's TLB. Those
/// faults were 40 % of a one-step `vae-train` process (1.2 s; Intel Xeon, `perf`).
fn written_zeros(n: usize) -> Vec<f32> {
    let mut zeros = Vec::with_capacity(n);
    zeros.resize(n, 0.0);
    zeros
}

/// Trainable variables of a VarMap, by name.
pub fn named_vars(varmap: &candle_nn::VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap.data().lock().map_err(|_| TrainError::LockPoisoned { what: "the VarMap" })?;
    Ok(data.clone().into_iter().collect())
}

/// The error of a poisoned lock on a parameter's moments.
const MOMENTS_POISONED: TrainError = TrainError::LockPoisoned { what: "Adam's moments" };

/// The error of a poisoned lock on a parameter's averaged values.
const AVERAGE_POISONED: TrainError = TrainError::LockPoisoned { what: "the weight average" };

/// Moments as tensors, for checkpoints.
pub(crate) fn moments_tensor(values: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on f(x) = Σ x², against values computed by hand with PyTorch's formulas.
    #[test]
    fn matches_pytorch_adam_by_hand() {
        let x = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut adam = Adam::new(vec![("x".into(), x.clone())], AdamConfig { lr: 0.1, ..Default::default() });
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap(), None).unwrap();
            for i in 0..2 {
                let g = 2.0 * expected[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                expected[i] -= 0.1 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((f64::from(got[i]) - expected[i]).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
        assert_eq!(adam.step_count(), 2);
    }

    /// An update of step size 0.01 for calling [`AdamUpdate::chunk`] directly.
    fn chunk_update(moments: &Mutex<Moments>) -> AdamUpdate<'_> {
        AdamUpdate { moments, average: None, beta1: 0.9, beta2: 0.999, step_size: 0.01, bias2_sqrt: 0.04, eps: 1e-8 }
    }

    /// A moment that would fall below the smallest normal f32 becomes zero (the weight
    /// then moves only by the normal moments' update), in both builds of the update.
    #[test]
    fn subnormal_moments_become_zero() {
        let moments = Mutex::new(Moments { m: vec![], v: vec![] });
        let update = chunk_update(&moments);
        let (mut p, g) = (vec![0.5f32; 2], vec![0.0f32; 2]);
        let (mut m, mut v) = (vec![f32::MIN_POSITIVE, 1e-3], vec![f32::MIN_POSITIVE, 1e-6]);
        update.chunk(&mut p, &g, &mut m, &mut v);
        assert_eq!((m[0], v[0]), (0.0, 0.0));
        assert_eq!((m[1], v[1]), (0.9 * 1e-3, 0.999 * 1e-6));
        assert_eq!(p[0], 0.5);
    }

    /// The host path that other devices take gives exactly the fused in-place result.
    #[test]
    fn host_path_matches_the_fused_op() {
        let start = Tensor::new(&[[0.5f32, -1.5, 2.0], [3.0, -0.25, 1.0]], &Device::Cpu).unwrap();
        let run = |force_host: bool| {
            let x = Var::from_tensor(&start).unwrap();
            let mut adam = Adam::new(vec![("x".into(), x.clone())], AdamConfig::default());
            for _ in 0..3 {
                let loss = x.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                adam.update(|_, p| grads.get(p.as_tensor()).map(Grad::Tensor), None, force_host).unwrap();
            }
            (x.as_tensor().to_vec2::<f32>().unwrap(), adam.moments(0).unwrap().v)
        };
        assert_eq!(run(true), run(false));
    }

    /// The weight average updated inside Adam's pass gives the bits of a pass of its own
    /// after the step, over several chunks of values and several steps; a parameter
    /// without a gradient is still averaged; an average over other parameters is refused.
    #[test]
    fn fused_average_matches_a_separate_pass() {
        let n = 40_000;
        let start: Vec<f32> = (0..n).map(|i| ((i * 7) as f32 * 0.013).sin()).collect();
        let run = |fused: bool| {
            let x = Var::from_tensor(&Tensor::from_slice(&start, n, &Device::Cpu).unwrap()).unwrap();
            let frozen = Var::from_tensor(&Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap()).unwrap();
            let params = vec![("frozen".to_string(), frozen), ("x".to_string(), x.clone())];
            let mut adam = Adam::new(params.clone(), AdamConfig::default());
            let mut ema = Ema::new(0.99, &params).unwrap();
            for _ in 0..3 {
                let grads = x.as_tensor().powf(3.0).unwrap().sum_all().unwrap().backward().unwrap();
                if fused {
                    adam.step(&grads, Some(&mut ema)).unwrap();
                } else {
                    adam.step(&grads, None).unwrap();
                    ema.update(&params).unwrap();
                }
            }
            let averaged = ema.tensors(&Device::Cpu).unwrap();
            let bits =
                |name: &str| averaged[name].to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (ema.updates(), bits("x"), bits("frozen"))
        };
        let fused = run(true);
        assert_eq!(fused, run(false));
        assert_ne!(fused.1, start.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "the average must move");
        let other = vec![("y".to_string(), Var::from_tensor(&Tensor::new(&[1.0f32], &Device::Cpu).unwrap()).unwrap())];
        let mut adam = Adam::new(other.clone(), AdamConfig::default());
        let mut ema = Ema::new(0.99, &[("x".to_string(), other[0].1.clone())]).unwrap();
        let grads = other[0].1.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(adam.step(&grads, Some(&mut ema)).is_err());
    }

    /// The AVX2 build of the update gives the plain build's bits, on values that exercise
    /// rounding (mixed magnitudes and signs, nonzero moments).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_update_is_bit_identical() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let n = 1003;
        let wave = |scale: f32, k: usize| (0..n).map(|i| scale * ((i * k) as f32 * 0.37).sin()).collect::<Vec<f32>>();
        let (p, g, m, v) =
            (wave(2.0, 1), wave(1e-2, 7), wave(1e-3, 3), wave(1e-4, 5).iter().map(|x| x.abs()).collect::<Vec<f32>>());
        let moments = Mutex::new(Moments { m: vec![], v: vec![] });
        let update = chunk_update(&moments);
        let plain = {
            let (mut p, mut m, mut v) = (p.clone(), m.clone(), v.clone());
            update.chunk(&mut p, &g, &mut m, &mut v);
            (p, m, v)
        };
        let (mut p, mut m, mut v) = (p, m, v);
        // SAFETY: AVX2 and FMA are present, checked above.
        unsafe { update.chunk_avx2(&mut p, &g, &mut m, &mut v) };
        assert_ne!(plain.0, wave(2.0, 1), "the update must change the parameters");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&p), bits(&m), bits(&v)), (bits(&plain.0), bits(&plain.1), bits(&plain.2)));
    }
}
