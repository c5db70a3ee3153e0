//! The model-loading path of `vae-model` (`load_vae`, as latent-features and vae-eval
//! call it): any file either loads or gives an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|bytes: &[u8]| {
    // `load_vae` reads from a path, as the stages do: one scratch file per fuzz process.
    thread_local! {
        static PATH: PathBuf = std::env::temp_dir().join(format!("vae-fuzz-{}.safetensors", std::process::id()));
    }
    PATH.with(|path| {
        std::fs::write(path, bytes).expect("scratch file");
        let _ = vae_model::load_vae(path, &candle_core::Device::Cpu);
    });
});
