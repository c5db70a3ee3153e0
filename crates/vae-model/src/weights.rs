//! Parameter names, PyTorch-default initialisation, and safetensors loading/saving.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng, rngs::StdRng};
use vae_data::DataError;

use crate::{Result, VaeConfig, VaeError};

/// One parameter tensor of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// `state_dict` name, e.g. `enc.conv1.weight`.
    pub name: String,
    /// Shape in PyTorch's layout.
    pub shape: Vec<usize>,
    /// Fan-in by PyTorch's rule, which sets the default init bound `1/sqrt(fan_in)`.
    pub fan_in: usize,
}

/// Every parameter of the model, in `state_dict` order: each layer's weight, then its
/// bias, from the layer table.
pub fn parameter_specs(cfg: &VaeConfig) -> Vec<ParamSpec> {
    let layers = cfg.layers();
    let mut specs = Vec::new();
    for layer in layers.all() {
        let fan_in = layer.fan_in();
        specs.push(ParamSpec { name: format!("{}.weight", layer.name), shape: layer.weight_shape(), fan_in });
        specs.push(ParamSpec { name: format!("{}.bias", layer.name), shape: vec![layer.outputs], fan_in });
    }
    specs
}

/// Fills `varmap` with PyTorch's default initialisation (weights and biases uniform in
/// `±1/sqrt(fan_in)`), drawn in `state_dict` order from `StdRng::seed_from_u64(seed)`.
pub fn init_varmap(varmap: &VarMap, cfg: &VaeConfig, seed: u64, device: &Device) -> Result<()> {
    cfg.validate()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = varmap.data().lock().map_err(|_| VaeError::LockPoisoned { what: "the VarMap" })?;
    for spec in parameter_specs(cfg) {
        let bound = 1.0 / (spec.fan_in as f32).sqrt();
        let n: usize = spec.shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        let tensor = Tensor::from_vec(values, spec.shape.as_slice(), device)?;
        data.insert(spec.name, Var::from_tensor(&tensor)?);
    }
    Ok(())
}

/// Loads the model's parameters from a safetensors file into a new [`VarMap`].
///
/// Every tensor the model needs must be present as `f32` with its exact shape; the error
/// names the first that is not. Returns the names of tensors the file holds beyond the
/// model's (not an error: callers may warn).
pub fn load_varmap(path: &Path, cfg: &VaeConfig, device: &Device) -> Result<(VarMap, Vec<String>)> {
    cfg.validate()?;
    let (mut tensors, _) = read_tensors(path, device)?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| VaeError::LockPoisoned { what: "the VarMap" })?;
        for spec in parameter_specs(cfg) {
            let tensor = take_tensor(path, &mut tensors, &spec.name, &spec.shape)?;
            data.insert(spec.name, Var::from_tensor(&tensor)?);
        }
    }
    let mut extra: Vec<String> = tensors.into_keys().collect();
    extra.sort();
    Ok((varmap, extra))
}

/// Loads a trained model from a safetensors file, taking the latent dimension from the
/// shape of `enc.mu.weight` (the other sizes are the reference's). Returns the model, its
/// variables and the names of tensors the file holds beyond the model's.
pub fn load_vae(path: &Path, device: &Device) -> Result<(crate::Vae, VarMap, Vec<String>)> {
    let (tensors, _) = read_tensors(path, device)?;
    let mu = tensors
        .get("enc.mu.weight")
        .ok_or_else(|| VaeError::MissingTensor { file: path.display().to_string(), name: "enc.mu.weight".into() })?;
    let cfg = VaeConfig { latent_dim: mu.dim(0)?, ..VaeConfig::default() };
    drop(tensors);
    let (varmap, extra) = load_varmap(path, &cfg, device)?;
    let vae = crate::Vae::new(&cfg, candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok((vae, varmap, extra))
}

/// The model of a safetensors file ([`load_vae`]), or without one the reference's model
/// initialised from `seed` ([`init_varmap`]).
pub fn load_or_init_vae(path: Option<&Path>, seed: u64, device: &Device) -> Result<(crate::Vae, VarMap)> {
    if let Some(path) = path {
        let (vae, varmap, _) = load_vae(path, device)?;
        return Ok((vae, varmap));
    }
    let (cfg, varmap) = (VaeConfig::default(), VarMap::new());
    init_varmap(&varmap, &cfg, seed, device)?;
    let vae = crate::Vae::new(&cfg, candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok((vae, varmap))
}

/// Removes tensor `name` from `tensors`, checking that it is `f32` of shape `shape`.
pub fn take_tensor(path: &Path, tensors: &mut HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<Tensor> {
    let file = path.display().to_string();
    let tensor =
        tensors.remove(name).ok_or_else(|| VaeError::MissingTensor { file: file.clone(), name: name.to_string() })?;
    if tensor.dtype() != DType::F32 || tensor.dims() != shape {
        return Err(VaeError::BadTensor {
            file,
            name: name.to_string(),
            expected: format!("F32 {shape:?}"),
            found: format!("{:?} {:?}", tensor.dtype(), tensor.dims()),
        });
    }
    Ok(tensor)
}

/// Reads every tensor of a safetensors file, and its string metadata. The header is
/// validated (offsets inside the file, sizes matching dtypes and shapes) before any
/// tensor is built, and every `f32` value must be finite: a NaN or an infinity is an
/// error naming the tensor (a ReLU would otherwise turn a NaN weight into silent zeros).
pub fn read_tensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    let bad = |e: safetensors::SafeTensorError| DataError::Format {
        path: path.into(),
        reason: format!("not a valid safetensors file: {e}"),
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(bad)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::I64 => DType::I64,
            other => {
                return Err(VaeError::BadTensor {
                    file: path.display().to_string(),
                    name,
                    expected: "F32 or I64".into(),
                    found: format!("{other:?}"),
                });
            }
        };
        if dtype == DType::F32 {
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if let Some((index, value)) = values.enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(VaeError::NonFinite { file: path.display().to_string(), name, index, value });
            }
        }
        tensors.insert(name, Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?);
    }
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// The tensors of a [`VarMap`] by name, for [`save_tensors`].
pub fn varmap_tensors(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().map_err(|_| VaeError::LockPoisoned { what: "the VarMap" })?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())
}

/// Writes named tensors (and optional string metadata) as safetensors, atomically
/// (temporary file, then rename), byte for byte what `safetensors::serialize` gives. The
/// values of f32 tensors on the CPU go to the file from where they lie: no copy of the
/// file is built in memory (a checkpoint of the reference's model is 230 MB, and fresh
/// memory is slow on the project's VMs).
pub fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    use safetensors::View;
    let format_error = |reason: String| DataError::Format { path: path.into(), reason };
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    // safetensors' own order: the widest dtype first, then by name.
    named.sort_by(|(left_name, left), (right_name, right)| {
        View::dtype(right).cmp(&View::dtype(left)).then(left_name.cmp(right_name))
    });
    // The tensors that cannot be read in place are copied out first, before the read
    // locks below are taken (candle's copy takes its own).
    let copied: Vec<Option<Vec<u8>>> = named
        .iter()
        .map(|(_, t)| {
            let (storage, layout) = t.storage_and_layout();
            let in_place = f32_bytes_in_place(&storage, layout).is_some();
            drop(storage);
            (!in_place).then(|| t.data().into_owned())
        })
        .collect();
    let storages: Vec<_> = named.iter().map(|(_, t)| t.storage_and_layout()).collect();
    let mut data = Vec::with_capacity(named.len());
    let (mut infos, mut offset) = (Vec::with_capacity(named.len()), 0);
    for (((name, t), copied), (storage, layout)) in named.iter().zip(&copied).zip(&storages) {
        let bytes = match copied {
            Some(bytes) => bytes.as_slice(),
            None => f32_bytes_in_place(storage, layout)
                .ok_or_else(|| format_error(format!("tensor {name} changed while being written")))?,
        };
        let info = safetensors::tensor::TensorInfo {
            dtype: View::dtype(t),
            shape: t.dims().to_vec(),
            data_offsets: (offset, offset + bytes.len()),
        };
        offset += bytes.len();
        infos.push((name.to_string(), info));
        data.push(bytes);
    }
    let header = safetensors::tensor::Metadata::new(metadata, infos)
        .and_then(|header| Ok(serde_json::to_vec(&header)?))
        .map_err(|e| format_error(format!("cannot serialise tensors: {e}")))?;
    let padding = header.len().next_multiple_of(8) - header.len();
    let length = ((header.len() + padding) as u64).to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![&length, &header, &b"        "[..padding]];
    parts.extend(data);
    vae_data::write_atomic_parts(path, &parts)?;
    Ok(())
}

/// The bytes of an f32 tensor's values on the CPU, where they lie, as safetensors stores
/// them (little-endian); `None` for other tensors, and on a big-endian machine.
fn f32_bytes_in_place<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [u8]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(values)) if cfg!(target_endian = "little") => {
            let (start, end) = layout.contiguous_offsets()?;
            let values = &values[start..end];
            // SAFETY: any initialised f32 is 4 initialised bytes, and u8 has alignment 1.
            Some(unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) })
        }
        _ => None,
    }
}
