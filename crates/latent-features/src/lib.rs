//! `latent-features`: encodes a dataset with a trained VAE into `[mu | logvar]` features.
//!
//! Every image is encoded deterministically (the posterior parameters, no sampling) and
//! the features are written as NPY float32, with the labels as NPY int64, ready for the
//! `classifier` stage or `numpy.load`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use clap::{Parser, ValueEnum};
use vae_data::run::{EncodedSplit, LatentFeaturesRecord, file};
use vae_data::{IMAGE_SIDE, Split, SplitKind, load_split, write_npy_f32, write_npy_i64};
use vae_model::{CpuStep, Precision, Vae};

/// Which posterior parameters make up the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Features {
    /// Means and log-variances concatenated, `2 × latent_dim` columns (the reference's choice)
    MuLogvar,
    /// Means only, `latent_dim` columns
    Mu,
}

/// Command-line flags of `latent-features`.
#[derive(Debug, Clone, Parser)]
#[command(version, about = "Encode MNIST-style images with a trained VAE into latent feature files (NPY)")]
pub struct LatentArgs {
    /// Trained weights, e.g. runs/NAME/model.safetensors (PyTorch state_dict names)
    #[arg(long)]
    pub model: PathBuf,
    /// --data: the dataset directory
    #[command(flatten)]
    pub data: vae_data::cli::DataArgs,
    /// Directory for {train,test}_latents.npy and {train,test}_labels.npy
    #[arg(long)]
    pub out: PathBuf,
    /// Columns of the feature files
    #[arg(long, value_enum, default_value_t = Features::MuLogvar)]
    pub features: Features,
    /// Images per forward pass
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// --train-limit, --test-limit: only the first images of each split
    #[command(flatten)]
    pub limits: vae_data::cli::LimitArgs,
    /// --device: where the model runs
    #[command(flatten)]
    pub device: vae_data::cli::DeviceArgs,
    /// Arithmetic of the encoder's wide product on the CPU: f32, or bf16 (operands
    /// rounded to bfloat16, f32 accumulation; on AMX or AVX-512 BF16, refused without;
    /// 1.7× faster on an Intel Xeon with AMX, 1.4× on an AMD Zen 4)
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// What encodes the images: the hand-written CPU kernels ([`CpuStep::encode`]) on the
/// CPU, candle's graph on other devices.
pub enum Encoder<'a> {
    /// The CPU kernels.
    Cpu(Box<CpuStep>),
    /// The candle model on its device.
    Candle(&'a Vae, Device),
}

impl<'a> Encoder<'a> {
    /// The encoder for `vae` (whose parameters are `varmap`) on `device`, computing in
    /// `precision` (which only the CPU kernels have).
    pub fn new(vae: &'a Vae, varmap: &VarMap, device: &Device, precision: Precision) -> anyhow::Result<Self> {
        Ok(match CpuStep::on_device(vae.config(), varmap, device, precision)? {
            Some(step) => Self::Cpu(Box::new(step)),
            None => Self::Candle(vae, device.clone()),
        })
    }

    /// `(mu, logvar)`, each `(n, latent_dim)` row-major, of `n` flattened images.
    fn encode(&mut self, pixels: Vec<f32>, n: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        match self {
            Self::Cpu(step) => Ok(step.encode(&pixels)?),
            Self::Candle(vae, device) => {
                let x = Tensor::from_vec(pixels, (n, 1, IMAGE_SIDE, IMAGE_SIDE), &*device)?;
                let (mu, logvar) = vae.encode(&x)?;
                Ok((mu.flatten_all()?.to_vec1()?, logvar.flatten_all()?.to_vec1()?))
            }
        }
    }
}

/// Encodes every image of `split`; returns `(rows, columns, features)`.
pub fn encode_split(
    encoder: &mut Encoder,
    split: &Split,
    features: Features,
    batch_size: usize,
    name: &str,
) -> anyhow::Result<(usize, usize, Vec<f32>)> {
    let indices: Vec<usize> = (0..split.len()).collect();
    let bar = vae_data::cli::progress_bar(split.len() as u64, name, "images");
    let started = Instant::now();
    let mut out = Vec::new();
    for batch in indices.chunks(batch_size) {
        let (mu, logvar) = encoder.encode(split.gather_f32(batch), batch.len())?;
        let dim = mu.len() / batch.len();
        for (mu, logvar) in mu.chunks_exact(dim).zip(logvar.chunks_exact(dim)) {
            out.extend_from_slice(mu);
            if features == Features::MuLogvar {
                out.extend_from_slice(logvar);
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let cols = out.len() / split.len().max(1);
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "{name}: the latent features of image {} are not finite ({}): is the model diverged?",
            i / cols,
            out[i]
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "{name}: encoded {} images in {seconds:.1} s ({:.0} images/s)",
        split.len(),
        split.len() as f64 / seconds
    );
    Ok((split.len(), cols, out))
}

/// Loads the model and the dataset, encodes both splits and writes the four files.
pub fn run(args: &LatentArgs) -> anyhow::Result<()> {
    let device = vae_model::device(&args.device.name)?;
    let (vae, varmap, extra) =
        vae_model::load_vae(&args.model, &device).with_context(|| format!("loading {}", args.model.display()))?;
    let mut encoder = Encoder::new(&vae, &varmap, &device, args.precision)?;
    if !extra.is_empty() {
        tracing::warn!("{} holds tensors the model does not use: {}", args.model.display(), extra.join(", "));
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut encode = |kind, limit: Option<u32>, name: &str, label: &str, (latents, labels): (&str, &str)| {
        let mut split = load_split(&args.data.dir, kind).with_context(|| format!("loading the {name} set"))?;
        if let Some(n) = limit {
            split.truncate(n as usize);
        }
        ensure!(!split.is_empty(), "the {name} set in {} is empty", args.data.dir.display());
        let (rows, cols, features) = encode_split(&mut encoder, &split, args.features, args.batch_size as usize, name)?;
        println!("Shape of {label} data :  ({rows}, {cols})");
        write_npy_f32(&args.out.join(latents), &[rows, cols], &features)?;
        let classes: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
        write_npy_i64(&args.out.join(labels), &[rows], &classes)?;
        anyhow::Ok(EncodedSplit { shape: [rows, cols], inputs_sha256: split.checksums })
    };
    let limits = &args.limits;
    let train =
        encode(SplitKind::Train, limits.train_limit, "train", "Training", (file::TRAIN_LATENTS, file::TRAIN_LABELS))?;
    let test = encode(SplitKind::Test, limits.test_limit, "test", "Testing", (file::TEST_LATENTS, file::TEST_LABELS))?;
    let record = LatentFeaturesRecord {
        tool: format!("latent-features {}", env!("CARGO_PKG_VERSION")),
        model: args.model.clone(),
        model_sha256: vae_data::sha256_file(&args.model)?,
        features: args.features.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string()),
        precision: args.precision.name().to_string(),
        data: args.data.dir.clone(),
        train,
        test,
    };
    let path = args.out.join(file::LATENT_FEATURES);
    vae_data::write_atomic(&path, serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarBuilder;

    /// Row i of the features is `[mu_i | logvar_i]` of test image i (or `mu_i` alone),
    /// whatever the batching, by the CPU kernels and by candle's graph alike.
    #[test]
    fn rows_are_mu_then_logvar_of_each_image_in_order() {
        let device = Device::Cpu;
        let cfg = vae_model::VaeConfig::default();
        let varmap = VarMap::new();
        vae_model::init_varmap(&varmap, &cfg, 3, &device).unwrap();
        let vae = Vae::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let mut test = load_split(&data, SplitKind::Test).unwrap();
        test.truncate(7);
        let x = Tensor::from_vec(test.gather_f32(&(0..7).collect::<Vec<_>>()), (7, 1, 28, 28), &device).unwrap();
        let (mu, logvar) = vae.encode(&x).unwrap();
        let (mu, logvar) = (mu.to_vec2::<f32>().unwrap(), logvar.to_vec2::<f32>().unwrap());
        let encoders =
            [Encoder::new(&vae, &varmap, &device, Precision::F32).unwrap(), Encoder::Candle(&vae, device.clone())];
        for mut encoder in encoders {
            let (rows, cols, both) = encode_split(&mut encoder, &test, Features::MuLogvar, 3, "test").unwrap();
            let (_, mu_cols, only_mu) = encode_split(&mut encoder, &test, Features::Mu, 5, "test").unwrap();
            assert_eq!((rows, cols, mu_cols), (7, 20, 10));
            for i in 0..7 {
                let expected: Vec<f32> = mu[i].iter().chain(&logvar[i]).copied().collect();
                let row = &both[i * 20..(i + 1) * 20];
                let diff = row.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff < 1e-4, "row {i} differs by {diff}");
                let mu_only = &only_mu[i * 10..(i + 1) * 10];
                // Other batch sizes may change the last bits of a product, nothing more.
                let diff = mu_only.iter().zip(&row[..10]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff < 1e-6, "--features mu is the first half: row {i} differs by {diff}");
            }
        }
    }

    /// A whole run on a few images writes the four files and a typed record of them.
    #[test]
    fn a_run_records_what_it_encoded() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, cfg) = (tmp.path(), vae_model::VaeConfig::default());
        let varmap = VarMap::new();
        vae_model::init_varmap(&varmap, &cfg, 4, &Device::Cpu).unwrap();
        let model = dir.join("model.safetensors");
        vae_model::save_tensors(&model, &vae_model::varmap_tensors(&varmap).unwrap(), None).unwrap();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let (model, data, out) = (model.to_str().unwrap(), data.to_str().unwrap(), dir.to_str().unwrap());
        let argv = [
            "latent-features",
            "--model",
            model,
            "--data",
            data,
            "--out",
            out,
            "--train-limit",
            "6",
            "--test-limit",
            "4",
        ];
        run(&LatentArgs::try_parse_from(argv).unwrap()).unwrap();
        let record: LatentFeaturesRecord = vae_data::run::read_json(&dir.join(file::LATENT_FEATURES)).unwrap();
        assert_eq!((record.train.shape, record.test.shape, record.features.as_str()), ([6, 20], [4, 20], "mu-logvar"));
        assert_eq!((record.test.inputs_sha256.len(), record.precision.as_str()), (2, "f32"));
        assert!(dir.join(file::TEST_LABELS).is_file() && dir.join(file::TRAIN_LATENTS).is_file());
        // In bf16 where the CPU has it (the record says so), refused by name elsewhere.
        let half = dir.join("bf16");
        let half_out = half.to_str().unwrap();
        let mut argv = argv.to_vec();
        argv[6] = half_out;
        argv.extend(["--precision", "bf16"]);
        match run(&LatentArgs::try_parse_from(argv).unwrap()) {
            Ok(()) => {
                let record: LatentFeaturesRecord = vae_data::run::read_json(&half.join(file::LATENT_FEATURES)).unwrap();
                assert_eq!((record.test.shape, record.precision.as_str()), ([4, 20], "bf16"));
            }
            Err(err) => {
                assert!(
                    !vae_model::machine::has_avx512_bf16() && format!("{err:#}").contains("AVX-512 BF16"),
                    "{err:#}"
                )
            }
        }
    }
}
