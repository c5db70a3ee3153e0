//! MNIST-style IDX files (`train-images-idx3-ubyte[.gz]` …), raw or gzip-compressed.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{DataError, Manifest, Result, sha256_hex};

/// Number of classes in MNIST and Fashion-MNIST; labels must lie in `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;
/// Height and width of every image.
pub const IMAGE_SIDE: usize = 28;

/// The IDX type code of unsigned bytes, the only element type the datasets use.
const IDX_U8: u8 = 0x08;

/// Which half of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// The 60,000-image training set (`train-*`).
    Train,
    /// The 10,000-image test set (`t10k-*`).
    Test,
}

impl SplitKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "t10k",
        }
    }
}

/// Images and labels of one split, as stored: `u8` pixels, row-major, one image after
/// another.
#[derive(Debug, Clone)]
pub struct Split {
    /// `len() * IMAGE_SIDE * IMAGE_SIDE` pixels in `0..=255`.
    pub images: Vec<u8>,
    /// One label in `0..NUM_CLASSES` per image.
    pub labels: Vec<u8>,
    /// `(file name, SHA-256 of its decompressed bytes)` of the two files read.
    pub checksums: Vec<(String, String)>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps only the first `n` images (all of them when `n` is larger).
    pub fn truncate(&mut self, n: usize) {
        self.labels.truncate(n);
        self.images.truncate(n.min(self.len()) * IMAGE_SIDE * IMAGE_SIDE);
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let px = IMAGE_SIDE * IMAGE_SIDE;
        &self.images[i * px..(i + 1) * px]
    }

    /// Images `indices`, scaled to `[0, 1]`, concatenated: shape `(indices.len(), 1, 28, 28)`.
    pub fn gather_f32(&self, indices: &[usize]) -> Vec<f32> {
        indices.iter().flat_map(|&i| self.image(i).iter().map(|&p| f32::from(p) / 255.0)).collect()
    }
}

/// Reads `dir/{train,t10k}-images-idx3-ubyte[.gz]` and the matching labels, checks that
/// they agree, and verifies them against `dir/SHA256SUMS` when that manifest exists.
pub fn load_split(dir: &Path, kind: SplitKind) -> Result<Split> {
    let manifest = Manifest::load_from_dir(dir)?;
    let prefix = kind.prefix();
    let (images_path, images_name) = locate(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (labels_path, labels_name) = locate(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, 3)?;
    let labels = read_idx(&labels_path, 1)?;
    for (file, name, idx) in [(&images_path, &images_name, &images), (&labels_path, &labels_name, &labels)] {
        if let Some(m) = &manifest {
            m.verify(file, name, &idx.sha256)?;
        }
    }
    if images.dims[1..] != [IMAGE_SIDE, IMAGE_SIDE] {
        return Err(DataError::format(
            &images_path,
            format!("images are {}x{}, expected {IMAGE_SIDE}x{IMAGE_SIDE}", images.dims[1], images.dims[2]),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::format(
            &labels_path,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims[0], images_path.display()),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, l)| usize::from(**l) >= NUM_CLASSES) {
        return Err(DataError::format(
            &labels_path,
            format!("label {l} at index {i} is outside 0..={}", NUM_CLASSES - 1),
        ));
    }
    Ok(Split {
        images: images.data,
        labels: labels.data,
        checksums: vec![(images_name, images.sha256), (labels_name, labels.sha256)],
    })
}

/// Finds `stem` or `stem.gz` in `dir`; returns the path and the manifest name (`stem`).
fn locate(dir: &Path, stem: &str) -> Result<(PathBuf, String)> {
    let raw = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    match (raw.exists(), gz.exists()) {
        (true, _) => Ok((raw, stem.to_string())),
        (false, true) => Ok((gz, stem.to_string())),
        (false, false) => Err(DataError::io(
            &gz,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("neither {stem} nor {stem}.gz exists")),
        )),
    }
}

/// A decoded IDX file of unsigned bytes.
#[derive(Debug, Clone)]
pub struct IdxArray {
    /// Dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
    /// SHA-256 of the decompressed file (header and data), hex.
    pub sha256: String,
}

/// Reads an IDX file of `u8` with `ndims` dimensions. A `.gz` name means gzip.
fn read_idx(path: &Path, ndims: usize) -> Result<IdxArray> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let gzip = path.extension().is_some_and(|e| e == "gz");
    decode_idx_from(path, BufReader::new(file), file_len, gzip, ndims)
}

/// Decodes the bytes of an IDX file held in memory (gzip-compressed when `gzip`), as
/// the dataset loader does; `path` only names the source in errors.
pub fn decode_idx(path: &Path, bytes: &[u8], gzip: bool, ndims: usize) -> Result<IdxArray> {
    decode_idx_from(path, bytes, bytes.len() as u64, gzip, ndims)
}

/// Decodes an IDX stream of `len` stored bytes.
///
/// The data size the header claims is checked against the input before any buffer of
/// that size exists: for raw input against its length; for gzip by reading at most the
/// claimed size into a buffer that grows only as bytes actually arrive.
fn decode_idx_from(path: &Path, input: impl Read, file_len: u64, gzip: bool, ndims: usize) -> Result<IdxArray> {
    let mut reader: Box<dyn Read> = if gzip { Box::new(flate2::read::GzDecoder::new(input)) } else { Box::new(input) };
    let read_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => DataError::format(path, "file is truncated"),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData if gzip => {
            DataError::format(path, format!("not a valid gzip stream: {e}"))
        }
        _ => DataError::io(path, e),
    };

    let mut header = vec![0u8; 4];
    reader.read_exact(&mut header).map_err(read_err)?;
    if header[0] != 0 || header[1] != 0 {
        return Err(DataError::format(path, format!("bad magic number {:02x?}: not an IDX file", &header)));
    }
    if header[2] != IDX_U8 {
        return Err(DataError::format(
            path,
            format!("element type code 0x{:02x}, expected 0x08 (unsigned byte)", header[2]),
        ));
    }
    if usize::from(header[3]) != ndims {
        return Err(DataError::format(path, format!("{} dimensions, expected {ndims}", header[3])));
    }
    let mut dims_bytes = vec![0u8; 4 * ndims];
    reader.read_exact(&mut dims_bytes).map_err(read_err)?;
    header.extend_from_slice(&dims_bytes);
    let dims: Vec<usize> =
        dims_bytes.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let claimed = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let Some(claimed) = claimed else {
        return Err(DataError::format(path, format!("dimensions {dims:?} overflow")));
    };
    let header_len = header.len() as u64;
    if !gzip && file_len.saturating_sub(header_len) != claimed {
        return Err(DataError::format(
            path,
            format!(
                "header claims {dims:?} = {claimed} bytes of data but the file holds {}",
                file_len.saturating_sub(header_len)
            ),
        ));
    }
    let mut data = Vec::new();
    reader.take(claimed.saturating_add(1)).read_to_end(&mut data).map_err(read_err)?;
    if data.len() as u64 != claimed {
        return Err(DataError::format(
            path,
            format!("header claims {dims:?} = {claimed} bytes of data but the file holds {}", data.len()),
        ));
    }
    header.extend_from_slice(&data);
    let sha256 = sha256_hex(&header);
    Ok(IdxArray { dims, data, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A temporary directory named `…name`, removed when it is dropped.
    fn tmp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().suffix(name).tempdir().unwrap()
    }

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, IDX_U8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Writes a 3-image split with the given label bytes; returns its directory.
    fn write_split(name: &str, labels: &[u8]) -> tempfile::TempDir {
        let tmp = tmp_dir(name);
        let dir = tmp.path();
        let pixels: Vec<u8> = (0..3 * 784).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_bytes(&[3, 28, 28], &pixels)).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz(&idx_bytes(&[labels.len() as u32], labels))).unwrap();
        tmp
    }

    fn reason(err: DataError) -> String {
        err.to_string()
    }

    #[test]
    fn round_trip_raw_and_gzip() {
        let dir_tmp = write_split("roundtrip", &[7, 0, 9]);
        let dir = dir_tmp.path();
        let split = load_split(dir, SplitKind::Test).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(split.labels, vec![7, 0, 9]);
        assert_eq!(split.image(2)[0], (2 * 784 % 251) as u8);
        let f = split.gather_f32(&[1]);
        assert_eq!(f.len(), 784);
        assert!((f[5] - f32::from(((784 + 5) % 251) as u8) / 255.0).abs() < 1e-7);
    }

    #[test]
    fn real_mnist_test_split_verifies_against_manifest() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let split = load_split(&dir, SplitKind::Test).unwrap();
        assert_eq!(split.len(), 10_000);
        assert_eq!(&split.labels[..5], &[7, 2, 1, 0, 4]);
        let histogram = split.labels.iter().fold([0usize; 10], |mut h, &l| {
            h[usize::from(l)] += 1;
            h
        });
        assert_eq!(histogram, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    }

    #[test]
    fn every_malformed_file_is_a_clear_error() {
        let pixels = vec![0u8; 784];
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "truncated"),
            ("short-header", vec![0, 0, 8], "truncated"),
            (
                "magic",
                {
                    let mut b = idx_bytes(&[1, 28, 28], &pixels);
                    b[0] = 0x1f;
                    b
                },
                "magic",
            ),
            (
                "dtype",
                {
                    let mut b = idx_bytes(&[1, 28, 28], &pixels);
                    b[2] = 0x0d;
                    b
                },
                "element type",
            ),
            ("ndims", idx_bytes(&[1, 784], &pixels), "2 dimensions"),
            ("truncated-body", idx_bytes(&[1, 28, 28], &pixels[..700]), "claims"),
            ("trailing", idx_bytes(&[1, 28, 28], &[pixels.clone(), vec![1]].concat()), "claims"),
            ("huge-claim", idx_bytes(&[u32::MAX, 28, 28], &pixels), "claims"),
            // (2³² − 1) · 641 · 6,700,417 = 2⁶⁴ − 1 bytes: header + data overflows u64.
            ("u64-claim", idx_bytes(&[u32::MAX, 641, 6_700_417], &pixels), "claims"),
            ("wrong-side", idx_bytes(&[4, 14, 14], &pixels), "14x14"),
        ];
        for (name, bytes, expected) in cases {
            let dir_tmp = write_split(name, &[1]);
            let dir = dir_tmp.path();
            std::fs::write(dir.join("t10k-images-idx3-ubyte"), &bytes).unwrap();
            let err = reason(load_split(dir, SplitKind::Test).unwrap_err());
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains("t10k-images-idx3-ubyte"), "{name}: error names the file: {err}");
            // The same bytes, gzip-compressed, must fail the same way.
            std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
            std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz(&bytes)).unwrap();
            let err = reason(load_split(dir, SplitKind::Test).unwrap_err());
            assert!(err.contains(expected), "{name} (gz): {err}");
        }
    }

    #[test]
    fn gzip_damage_label_range_and_count_mismatch_are_errors() {
        let dir_tmp = write_split("count", &[1, 2]);
        let dir = dir_tmp.path();
        assert!(reason(load_split(dir, SplitKind::Test).unwrap_err()).contains("2 labels for 3 images"));

        let dir_tmp = write_split("range", &[1, 12, 3]);
        let dir = dir_tmp.path();
        assert!(reason(load_split(dir, SplitKind::Test).unwrap_err()).contains("label 12 at index 1"));

        let dir_tmp = write_split("not-gzip", &[1, 2, 3]);
        let dir = dir_tmp.path();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), idx_bytes(&[3], &[1, 2, 3])).unwrap();
        assert!(reason(load_split(dir, SplitKind::Test).unwrap_err()).contains("gzip"));

        let dir_tmp = write_split("cut-gzip", &[1, 2, 3]);
        let dir = dir_tmp.path();
        let full = gz(&idx_bytes(&[3], &[1, 2, 3]));
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), &full[..full.len() - 6]).unwrap();
        assert!(load_split(dir, SplitKind::Test).is_err());

        let dir_tmp = write_split("missing", &[1, 2, 3]);
        let dir = dir_tmp.path();
        std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert!(reason(load_split(dir, SplitKind::Test).unwrap_err()).contains("t10k-labels-idx1-ubyte"));
    }

    #[test]
    fn checksum_mismatch_is_an_error() {
        let dir_tmp = write_split("checksum", &[1, 2, 3]);
        let dir = dir_tmp.path();
        let good = load_split(dir, SplitKind::Test).unwrap();
        let (name, sum) = &good.checksums[0];
        std::fs::write(dir.join(Manifest::FILE_NAME), format!("{sum}  {name}\n")).unwrap();
        load_split(dir, SplitKind::Test).unwrap();
        let wrong = "0".repeat(64);
        std::fs::write(dir.join(Manifest::FILE_NAME), format!("{wrong}  {name}\n")).unwrap();
        let err = reason(load_split(dir, SplitKind::Test).unwrap_err());
        assert!(err.contains("does not match"), "{err}");
    }
}
