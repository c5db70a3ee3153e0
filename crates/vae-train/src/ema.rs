//! An exponential moving average of the weights (Polyak averaging), updated after every
//! optimisation step and used, when asked for, to evaluate and to write the model.

use std::collections::HashMap;

use candle_core::{CpuStorage, Storage, Tensor, Var};
use rayon::prelude::*;

use crate::{Result, TrainError};

/// The averaged weights, in the optimiser's parameter order.
pub struct Ema {
    decay: f64,
    updates: u64,
    shadows: Vec<(String, Vec<f32>)>,
}

/// Calls `f` with the values of a contiguous f32 CPU tensor.
fn with_values<R>(name: &str, tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(f(&v[start..end])),
        _ => Err(TrainError::NotCpuF32 { what: "weight average", name: name.to_string() }),
    }
}

impl Ema {
    /// An average that starts at the current values of `params`.
    pub fn new(decay: f64, params: &[(String, Var)]) -> Result<Self> {
        let shadows = params
            .iter()
            .map(|(name, p)| with_values(name, p.as_tensor(), |v| (name.clone(), v.to_vec())))
            .collect::<Result<_>>()?;
        Ok(Self { decay, updates: 0, shadows })
    }

    /// The decay of the next update: `min(decay, (1 + n) / (10 + n))` after `n` updates,
    /// so that the starting weights do not dominate the average of a short run.
    pub fn current_decay(&self) -> f64 {
        self.decay.min((1 + self.updates) as f64 / (10 + self.updates) as f64)
    }

    /// Updates performed so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// `shadow ← d · shadow + (1 − d) · weight` for every parameter (same order as at
    /// [`Ema::new`]), in a pass of its own; [`Adam`](crate::adam::Adam)'s steps can do it
    /// in theirs instead.
    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        let (d, shadows) = self.next_update(params.iter().map(|(name, _)| name.as_str()))?;
        for (shadow, (name, p)) in shadows.into_iter().zip(params) {
            with_values(name, p.as_tensor(), |w| {
                shadow.par_chunks_mut(1 << 14).zip(w.par_chunks(1 << 14)).for_each(|(s, w)| blend(s, w, d))
            })?;
        }
        Ok(())
    }

    /// Counts an update and returns its decay and the averaged values to update, after
    /// checking that `names` are the averaged parameters' names, in order.
    pub(crate) fn next_update<'n>(&mut self, names: impl Iterator<Item = &'n str>) -> Result<(f32, Vec<&mut [f32]>)> {
        let names: Vec<&str> = names.collect();
        if !names.iter().copied().eq(self.names()) {
            let detail = format!("updated with parameters {names:?}, averages {:?}", self.names().collect::<Vec<_>>());
            return Err(TrainError::StateMismatch { what: "weight average", detail });
        }
        let d = self.current_decay() as f32;
        self.updates += 1;
        Ok((d, self.shadows.iter_mut().map(|(_, s)| s.as_mut_slice()).collect()))
    }

    /// The averaged weights as tensors, by parameter name.
    pub fn tensors(&self, device: &candle_core::Device) -> Result<HashMap<String, Tensor>> {
        self.shadows.iter().map(|(name, s)| Ok((name.clone(), Tensor::from_slice(s, s.len(), device)?))).collect()
    }

    /// The names of the averaged parameters, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shadows.iter().map(|(n, _)| n.as_str())
    }

    /// Restores the state saved from an average over the same parameters: the update
    /// count and each parameter's averaged values (in [`Ema::names`] order).
    pub fn restore(&mut self, updates: u64, values: Vec<Vec<f32>>) -> Result<()> {
        if values.len() != self.shadows.len() {
            let detail = format!("{} tensors, expected {}", values.len(), self.shadows.len());
            return Err(TrainError::StateMismatch { what: "weight average", detail });
        }
        for ((name, shadow), saved) in self.shadows.iter_mut().zip(values) {
            if saved.len() != shadow.len() {
                let detail = format!("{name} has the wrong size");
                return Err(TrainError::StateMismatch { what: "weight average", detail });
            }
            *shadow = saved;
        }
        self.updates = updates;
        Ok(())
    }
}

/// `shadow ← decay · shadow + (1 − decay) · weights`, value by value.
pub(crate) fn blend(shadow: &mut [f32], weights: &[f32], decay: f32) {
    for (s, &w) in shadow.iter_mut().zip(weights) {
        *s = decay * *s + (1.0 - decay) * w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_average_follows_its_formula_with_the_warm_up_decay() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let params = vec![("w".to_string(), var.clone())];
        let mut ema = Ema::new(0.9, &params).unwrap();
        assert_eq!(ema.current_decay(), 0.1, "first update: (1 + 0) / (10 + 0)");
        var.set(&Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        ema.update(&params).unwrap();
        let first = [0.1f32 * 1.0 + 0.9 * 3.0, 0.1 * -2.0 + 0.9 * 0.0];
        let values = |ema: &Ema| ema.tensors(&Device::Cpu).unwrap()["w"].to_vec1::<f32>().unwrap();
        assert_eq!(values(&ema), first);
        for _ in 0..200 {
            ema.update(&params).unwrap();
        }
        assert_eq!(ema.current_decay(), 0.9, "capped at the decay asked for");
        assert!(values(&ema).iter().zip([3.0f32, 0.0]).all(|(a, b)| (a - b).abs() < 1e-5), "converges to the weights");
        let mut restored = Ema::new(0.9, &params).unwrap();
        restored.restore(ema.updates(), vec![values(&ema)]).unwrap();
        assert_eq!((restored.updates(), values(&restored)), (201, values(&ema)));
        assert!(restored.restore(1, vec![vec![0.0; 3]]).is_err());
    }
}
