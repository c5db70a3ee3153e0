//! Repeated timing for the benches: the median of several runs after a warm-up, with the
//! spread.

use std::time::Instant;

/// Seconds of repeated runs of one piece of work.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// The median run.
    pub median: f64,
    /// The fastest run.
    pub min: f64,
    /// The slowest run.
    pub max: f64,
}

/// Runs `f` once to warm up, then `reps` times (at least once), timing each run.
pub fn measure(reps: usize, mut f: impl FnMut()) -> Stats {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    Stats { median: t[t.len() / 2], min: t[0], max: t[t.len() - 1] }
}

impl std::fmt::Display for Stats {
    /// `  123.4 ms (spread 120.1–130.2)`: the form `cargo xtask bench` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:8.1} ms (spread {:.1}–{:.1})", self.median * 1e3, self.min * 1e3, self.max * 1e3)
    }
}
