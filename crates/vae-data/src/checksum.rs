use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{DataError, Result};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `SHA256SUMS` manifest (`<hex>  <file name>` per line, as `sha256sum` writes it)
/// of the *decompressed* bytes of a dataset's files.
#[derive(Debug, Clone)]
pub struct Manifest {
    path: PathBuf,
    sums: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest's file name inside a dataset directory.
    pub const FILE_NAME: &'static str = "SHA256SUMS";

    /// Reads `dir/SHA256SUMS` if it exists; `Ok(None)` when the directory has none.
    pub fn load_from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(Self::FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if meta.len() > 1 << 20 {
            return Err(DataError::format(&path, "manifest larger than 1 MiB"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let mut sums = BTreeMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(sum), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(DataError::format(&path, format!("line {}: expected '<sha256>  <file>'", i + 1)));
            };
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DataError::format(&path, format!("line {}: '{sum}' is not a SHA-256", i + 1)));
            }
            sums.insert(name.trim_start_matches('*').to_string(), sum.to_ascii_lowercase());
        }
        Ok(Some(Self { path, sums }))
    }

    /// Checks `actual` (hex SHA-256 of the decompressed content) against the entry for
    /// `name`; a file the manifest does not list passes.
    pub fn verify(&self, file: &Path, name: &str, actual: &str) -> Result<()> {
        match self.sums.get(name) {
            Some(expected) if expected != actual => Err(DataError::Checksum {
                path: file.to_path_buf(),
                manifest: self.path.clone(),
                expected: expected.clone(),
                actual: actual.to_string(),
            }),
            _ => Ok(()),
        }
    }
}
