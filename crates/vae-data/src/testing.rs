//! Test support shared by the workspace's test suites.

/// Whether a slow end-to-end test should be skipped: yes unless `RUN_SLOW_TESTS` or `CI`
/// is set (as `cargo xtask ci`, and so CI, does), so that a plain `cargo test` stays
/// quick. The caller returns early; this prints that it did (the rust-analyzer way).
pub fn skip_slow_tests() -> bool {
    let skip = std::env::var_os("RUN_SLOW_TESTS").is_none() && std::env::var_os("CI").is_none();
    if skip {
        eprintln!("skipping a slow test: set RUN_SLOW_TESTS=1 (cargo xtask ci does) to run it");
    }
    skip
}

/// The MNIST copy that ships with the project (`data/mnist`), for tests and benches.
pub fn project_mnist_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

/// The first `n` images of a split of [`project_mnist_dir`], flattened, in [0, 1]. Panics
/// (it is for tests and benches) if the files are unreadable or hold fewer than `n` images.
pub fn project_mnist_images(kind: crate::SplitKind, n: usize) -> Vec<f32> {
    let split = crate::load_split(&project_mnist_dir(), kind).expect("the project's MNIST copy in data/mnist");
    assert!(n <= split.len(), "{n} images asked of a split of {}", split.len());
    split.gather_f32(&(0..n).collect::<Vec<_>>())
}
