/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VaeError>;

/// Errors of building, running, loading or saving the model.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// An error from candle (shapes, devices, kernels).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The configuration or an input does not fit the model.
    #[error("{0}")]
    Config(String),
    /// What was asked for needs something this CPU lacks.
    #[error("{0}")]
    Unsupported(String),
    /// A batch given to the CPU step does not fit the model.
    #[error("cpu step: {0}")]
    BadBatch(String),
    /// A parameter given to the CPU step is missing or unusable.
    #[error("cpu step: parameter {name} {reason}")]
    BadParameter {
        /// The parameter's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A lock was poisoned: a thread panicked while holding it.
    #[error("{what} is unusable: a thread panicked while holding its lock")]
    LockPoisoned {
        /// What the lock guards.
        what: &'static str,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{file}: tensor '{name}' is missing")]
    MissingTensor {
        /// The weights file.
        file: String,
        /// The missing tensor's name.
        name: String,
    },
    /// A tensor in a weights file has the wrong shape or dtype.
    #[error("{file}: tensor '{name}' is {found}, expected {expected}")]
    BadTensor {
        /// The weights file.
        file: String,
        /// The tensor's name.
        name: String,
        /// What the model needs, e.g. `f32 [16, 1, 3, 3]`.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A tensor in a file holds NaN or an infinity.
    #[error(
        "{file}: tensor '{name}' holds a non-finite value ({value} at flat index {index}); the file is damaged or comes from a diverged run"
    )]
    NonFinite {
        /// The file.
        file: String,
        /// The tensor's name.
        name: String,
        /// Index of the first non-finite value in the flattened tensor.
        index: usize,
        /// That value.
        value: f32,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Data(#[from] vae_data::DataError),
}
