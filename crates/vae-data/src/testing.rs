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
