//! Files on disk for the VAE toolkit: MNIST-style IDX datasets, NPY arrays, SHA-256
//! checksums and atomic writes.
//!
//! Every reader checks the sizes a header claims against the bytes actually present
//! *before* allocating for them, and reports a typed [`DataError`] naming the file and
//! the problem: a corrupted or hostile file is an error, never a panic or a huge
//! allocation.

mod atomic;
mod checksum;
#[cfg(feature = "cli")]
pub mod cli;
mod error;
mod idx;
mod known;
mod npy;
pub mod run;
pub mod testing;
pub mod timing;

pub use atomic::{DIRECT_WRITE_MIN, process_running, write_atomic, write_atomic_parts, write_atomic_with};
pub use checksum::{Manifest, sha256_file, sha256_hex};
pub use error::{DataError, Result};
pub use idx::{IMAGE_SIDE, IdxArray, NUM_CLASSES, Split, SplitKind, decode_idx, load_split};
pub use known::{FASHION_MNIST, KNOWN_DATASETS, KnownDataset, MNIST, class_names, identify};
pub use npy::{NpyArray, NpyData, decode_npy, read_npy, write_npy_f32, write_npy_i64};

#[cfg(test)]
mod mutation_tests {
    //! A stand-in for fuzzing in every test run: thousands of randomly damaged copies of
    //! valid files must each load or fail with an error, never panic.

    use super::*;
    use std::io::Write;

    fn mutate(bytes: &[u8], state: &mut u64) -> Vec<u8> {
        let mut next = || {
            *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (*state >> 33) as usize
        };
        let mut out = bytes.to_vec();
        match next() % 3 {
            0 => out.truncate(next() % (bytes.len() + 1)),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let at = next() % out.len();
                    out[at] = next() as u8;
                }
            }
            _ => {
                // Damage the header, where sizes live.
                let at = next() % out.len().min(24);
                out[at] = [0x00, 0xff, 0x7f, 0x80][next() % 4];
            }
        }
        out
    }

    #[test]
    fn damaged_idx_and_npy_files_never_panic() {
        let dir_tmp = tempfile::tempdir().unwrap();
        let dir = dir_tmp.path().to_path_buf();
        let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
        idx.extend((0..2 * 784).map(|i| (i % 256) as u8));
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 3, 9];
        let npy_path = dir.join("a.npy");
        write_npy_f32(&npy_path, &[4, 5], &[0.25; 20]).unwrap();
        let npy = std::fs::read(&npy_path).unwrap();
        let mut state = 42u64;
        let (mut ok, mut failed) = (0, 0);
        for i in 0..3000 {
            let images = dir.join("t10k-images-idx3-ubyte");
            let gz_labels = dir.join("t10k-labels-idx1-ubyte.gz");
            std::fs::write(&images, mutate(&idx, &mut state)).unwrap();
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&labels).unwrap();
            let gz = enc.finish().unwrap();
            std::fs::write(&gz_labels, if i % 2 == 0 { mutate(&gz, &mut state) } else { gz }).unwrap();
            match load_split(&dir, SplitKind::Test) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            std::fs::write(&npy_path, mutate(&npy, &mut state)).unwrap();
            match read_npy(&npy_path) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        assert!(failed > 1000 && ok > 10, "mutations exercised both paths: {ok} loaded, {failed} refused");
    }
}
