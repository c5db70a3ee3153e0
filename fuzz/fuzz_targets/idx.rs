//! IDX decoding, raw and gzip: any bytes either decode to a consistent array or give an
//! error — never a panic or an allocation beyond what the input can fill.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the container and the rank the caller expects.
    let Some((&mode, bytes)) = input.split_first() else { return };
    let gzip = mode & 1 == 1;
    let ndims = usize::from(mode >> 1) % 4;
    if let Ok(idx) = vae_data::decode_idx(Path::new("fuzz.idx"), bytes, gzip, ndims) {
        assert_eq!(idx.dims.len(), ndims);
        assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>());
        if !gzip {
            assert_eq!(bytes.len(), 4 + 4 * ndims + idx.data.len());
        }
    }
});
