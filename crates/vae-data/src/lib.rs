//! Files on disk for the VAE toolkit: MNIST-style IDX datasets, NPY arrays, SHA-256
//! checksums and atomic writes.
//!
//! Every reader checks the sizes a header claims against the bytes actually present
//! *before* allocating for them, and reports a typed [`DataError`] naming the file and
//! the problem: a corrupted or hostile file is an error, never a panic or a huge
//! allocation.

mod atomic;
mod checksum;
mod error;
mod idx;
mod npy;
pub mod seed;

pub use atomic::{write_atomic, write_atomic_with};
pub use checksum::{Manifest, sha256_file, sha256_hex};
pub use error::{DataError, Result};
pub use idx::{IMAGE_SIDE, NUM_CLASSES, Split, SplitKind, load_split};
pub use npy::{NpyArray, NpyData, read_npy, write_npy_f32, write_npy_i64};
