//! NPY decoding and the typed accessors the stages use: any bytes either decode to an
//! array whose element count matches its shape or give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vae_data::NpyData;

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("fuzz.npy");
    let Ok(array) = vae_data::decode_npy(path, bytes) else { return };
    let count = match &array.data {
        NpyData::F32(v) => v.len(),
        NpyData::I64(v) => v.len(),
    };
    assert_eq!(count, array.shape.iter().product::<usize>());
    // What latent-features' consumers ask for: (n, 20) finite f32 features, (n,) labels.
    let _ = array.clone().into_f32(path, &[None, Some(20)]);
    let _ = array.into_i64(path, &[None]);
});
