//! The errors of the training library.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Errors of the optimiser, the weight average and the steps around them.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An error from candle (shapes, devices, kernels).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error of the model (its CPU step, its weights).
    #[error(transparent)]
    Model(#[from] vae_model::VaeError),
    /// A lock was poisoned: a thread panicked while holding it.
    #[error("{what} is unusable: a thread panicked while holding its lock")]
    LockPoisoned {
        /// What the lock guards.
        what: &'static str,
    },
    /// Saved optimiser or average state does not fit the parameters it is restored into.
    #[error("{what}: {detail}")]
    StateMismatch {
        /// Which state (`optimiser state`, `weight average`).
        what: &'static str,
        /// What does not fit.
        detail: String,
    },
    /// A parameter is not a contiguous f32 tensor on the CPU.
    #[error("{what}: parameter {name} must be a contiguous f32 CPU tensor")]
    NotCpuF32 {
        /// Which part needs it.
        what: &'static str,
        /// The parameter's name.
        name: String,
    },
}
