use std::path::{Path, PathBuf};

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong reading or writing the toolkit's files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused an operation on the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file's bytes do not form a valid file of the expected format.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The file's content does not match the checksum its manifest records.
    #[error("{}: SHA-256 {actual} does not match {expected} from the manifest {}", path.display(), manifest.display())]
    Checksum {
        /// The file concerned.
        path: PathBuf,
        /// The manifest that holds the expected checksum.
        manifest: PathBuf,
        /// The checksum the manifest records.
        expected: String,
        /// The checksum of the bytes read.
        actual: String,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        Self::Format { path: path.to_path_buf(), reason: reason.into() }
    }
}
