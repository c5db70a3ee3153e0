//! The published figures of the seed experiment, which this toolkit must match or beat.

/// `(0-based epoch, train loss, test loss)` reported by the seed.
pub const SEED_LOSSES: [(u32, f64, f64); 5] =
    [(0, 149.62, 117.71), (4, 105.21, 105.12), (9, 101.13, 102.69), (14, 98.98, 102.36), (19, 97.41, 101.55)];

/// The seed's LinearSVC test scores: accuracy, macro precision, macro recall, macro F1.
pub const SEED_SVM: [(&str, f64); 4] =
    [("accuracy", 0.9316), ("macro precision", 0.9316), ("macro recall", 0.9310), ("macro F1", 0.9310)];
