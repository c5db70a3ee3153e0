//! NPY arrays (NumPy's `.npy`, format versions 1–3), written and read strictly.

use std::path::Path;

use crate::{DataError, Result, write_atomic};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header accepted; NumPy itself caps headers far below this.
const MAX_HEADER: usize = 1 << 16;

/// The element data of an NPY array, in the dtypes the toolkit exchanges.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`
    F32(Vec<f32>),
    /// `<i8`
    I64(Vec<i64>),
}

impl NpyData {
    fn descr(&self) -> &'static str {
        match self {
            Self::F32(_) => "<f4",
            Self::I64(_) => "<i8",
        }
    }
}

/// An NPY array: C-order `shape` and its elements.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: NpyData,
}

impl NpyArray {
    /// The `f32` elements, after checking the rank, any fixed dimensions (`None` is
    /// free) and that every value is finite.
    pub fn into_f32(self, path: &Path, dims: &[Option<usize>]) -> Result<(Vec<usize>, Vec<f32>)> {
        check_shape(path, &self.shape, dims)?;
        match self.data {
            NpyData::F32(v) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    let row = i / self.shape.iter().skip(1).product::<usize>().max(1);
                    return Err(DataError::format(path, format!("value {} in row {row} is not finite", v[i])));
                }
                Ok((self.shape, v))
            }
            other => Err(DataError::format(path, format!("dtype {}, expected <f4", other.descr()))),
        }
    }

    /// The `i64` elements, after checking the rank and fixed dimensions.
    pub fn into_i64(self, path: &Path, dims: &[Option<usize>]) -> Result<(Vec<usize>, Vec<i64>)> {
        check_shape(path, &self.shape, dims)?;
        match self.data {
            NpyData::I64(v) => Ok((self.shape, v)),
            other => Err(DataError::format(path, format!("dtype {}, expected <i8", other.descr()))),
        }
    }
}

fn check_shape(path: &Path, shape: &[usize], dims: &[Option<usize>]) -> Result<()> {
    let fits = shape.len() == dims.len() && shape.iter().zip(dims).all(|(s, d)| d.is_none_or(|d| d == *s));
    if fits {
        return Ok(());
    }
    let want: Vec<String> = dims.iter().map(|d| d.map_or("_".into(), |d| d.to_string())).collect();
    Err(DataError::format(path, format!("shape {shape:?}, expected ({})", want.join(", "))))
}

/// Writes an `f32` array atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy(path, "<f4", shape, data.len(), &body)
}

/// Writes an `i64` array atomically.
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    let body: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy(path, "<i8", shape, data.len(), &body)
}

fn write_npy(path: &Path, descr: &str, shape: &[usize], len: usize, body: &[u8]) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(DataError::format(path, format!("{len} elements do not fill shape {shape:?}")));
    }
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    write_atomic(path, &out)
}

/// Reads an NPY file, checking magic, version, header and that the data length equals
/// what the shape and dtype require before converting it.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_npy(path, &bytes)
}

/// Decodes the bytes of an NPY file held in memory, as [`read_npy`] does; `path` only
/// names the source in errors.
pub fn decode_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let bad = |reason: String| DataError::format(path, reason);
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not an NPY file (bad magic)".into()));
    }
    let major = bytes[MAGIC.len()];
    let len_at = MAGIC.len() + 2;
    let (header_len, header_at) = match major {
        1 if bytes.len() >= len_at + 2 => (u16::from_le_bytes([bytes[len_at], bytes[len_at + 1]]) as usize, len_at + 2),
        2 | 3 if bytes.len() >= len_at + 4 => {
            let b = &bytes[len_at..len_at + 4];
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, len_at + 4)
        }
        1..=3 => return Err(bad("truncated NPY preamble".into())),
        v => return Err(bad(format!("unsupported NPY format version {v}"))),
    };
    if header_len > MAX_HEADER || header_at + header_len > bytes.len() {
        return Err(bad(format!("header length {header_len} goes beyond the file ({} bytes)", bytes.len())));
    }
    let header =
        std::str::from_utf8(&bytes[header_at..header_at + header_len]).map_err(|_| bad("header is not text".into()))?;
    let (descr, fortran, shape) =
        parse_header(header).map_err(|r| bad(format!("bad header {:?}: {r}", header.trim())))?;
    if fortran {
        return Err(bad("fortran_order arrays are not supported; save with C order".into()));
    }
    let item = match descr.as_str() {
        "<f4" | "<i8" => descr.as_str(),
        d if d.starts_with('>') => return Err(bad(format!("big-endian dtype {d} is not supported"))),
        d => return Err(bad(format!("dtype {d} is not supported (expected <f4 or <i8)"))),
    };
    let item_size = if item == "<f4" { 4 } else { 8 };
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data = &bytes[header_at + header_len..];
    if count.and_then(|c| c.checked_mul(item_size)) != Some(data.len()) {
        return Err(bad(format!(
            "shape {shape:?} of {descr} needs a different size than the {} data bytes present",
            data.len()
        )));
    }
    let data = if item == "<f4" {
        NpyData::F32(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    } else {
        NpyData::I64(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    };
    Ok(NpyArray { shape, data })
}

/// Parses the header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(header: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let inner = header.trim().strip_prefix('{').and_then(|s| s.strip_suffix('}')).ok_or("not a dict literal")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or("expected a quoted key")?;
        let after = after.trim_start().strip_prefix(':').ok_or("expected ':'")?.trim_start();
        rest = match key {
            "descr" => {
                let (v, after) = quoted(after).ok_or("descr must be a string")?;
                descr = Some(v.to_string());
                after
            }
            "fortran_order" => {
                let v = if after.starts_with("True") {
                    true
                } else if after.starts_with("False") {
                    false
                } else {
                    return Err("fortran_order must be True or False".into());
                };
                fortran = Some(v);
                &after[if v { 4 } else { 5 }..]
            }
            "shape" => {
                let body = after.strip_prefix('(').ok_or("shape must be a tuple")?;
                let end = body.find(')').ok_or("unclosed shape tuple")?;
                let dims = body[..end].split(',').map(str::trim).filter(|s| !s.is_empty());
                let dims: std::result::Result<Vec<usize>, _> = dims.map(str::parse).collect();
                shape = Some(dims.map_err(|_| "shape entries must be non-negative integers")?);
                &body[end + 1..]
            }
            other => return Err(format!("unknown key '{other}'")),
        };
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err("descr, fortran_order and shape are all required".into()),
    }
}

/// Splits `'text'rest` (or with double quotes) into `(text, rest)`.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(q)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file named `…name`, removed when the returned path is dropped.
    fn tmp(name: &str) -> tempfile::TempPath {
        tempfile::Builder::new().suffix(name).tempfile().unwrap().into_temp_path()
    }

    fn raw_npy(header: &str, body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn round_trip_f32_and_i64() {
        let p = tmp("rt_f32.npy");
        write_npy_f32(&p, &[2, 3], &[1.0, -2.5, 3.0, 0.0, 1e-8, 7.0]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.iter().position(|&b| b == b'\n').unwrap() + 1) % 64, 0, "data aligned to 64 bytes");
        let (shape, v) = read_npy(&p).unwrap().into_f32(&p, &[None, Some(3)]).unwrap();
        assert_eq!((shape, v), (vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-8, 7.0]));
        let p = tmp("rt_i64.npy");
        write_npy_i64(&p, &[4], &[0, 9, -1, 1 << 40]).unwrap();
        let (shape, v) = read_npy(&p).unwrap().into_i64(&p, &[Some(4)]).unwrap();
        assert_eq!((shape, v), (vec![4], vec![0, 9, -1, 1 << 40]));
    }

    #[test]
    fn every_malformed_file_is_a_clear_error() {
        let f4 = |n: usize| vec![0u8; 4 * n];
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("magic", b"PK\x03\x04 not npy".to_vec(), "bad magic"),
            (
                "version",
                {
                    let mut b = raw_npy(good, &f4(4));
                    b[6] = 9;
                    b
                },
                "version 9",
            ),
            (
                "header-len",
                {
                    let mut b = raw_npy(good, &f4(4));
                    b[8] = 0xff;
                    b[9] = 0x7f;
                    b
                },
                "beyond the file",
            ),
            ("not-dict", raw_npy("descr=<f4", &f4(4)), "dict"),
            (
                "unknown-key",
                raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", &f4(4)),
                "unknown key",
            ),
            ("f8", raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &f4(4)), "<f8"),
            ("big-endian", raw_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", &f4(4)), "big-endian"),
            ("fortran", raw_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", &f4(4)), "fortran"),
            ("short-data", raw_npy(good, &f4(3)), "data bytes"),
            (
                "huge-shape",
                raw_npy(
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967295, 4294967295, 4294967295), }",
                    &f4(4),
                ),
                "data bytes",
            ),
            (
                "neg-shape",
                raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }", &f4(4)),
                "non-negative",
            ),
        ];
        for (name, bytes, expected) in cases {
            let p = tmp(&format!("{name}.npy"));
            std::fs::write(&p, bytes).unwrap();
            let err = read_npy(&p).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(&format!("{name}.npy")), "{name}: error names the file: {err}");
        }
    }

    #[test]
    fn typed_access_checks_shape_dtype_and_finiteness() {
        let p = tmp("typed.npy");
        write_npy_f32(&p, &[2, 2], &[0.0, 1.0, f32::NAN, 2.0]).unwrap();
        let err = read_npy(&p).unwrap().into_f32(&p, &[None, Some(2)]).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("not finite"), "{err}");
        write_npy_f32(&p, &[2, 2], &[0.0; 4]).unwrap();
        let err = read_npy(&p).unwrap().into_f32(&p, &[None, Some(20)]).unwrap_err().to_string();
        assert!(err.contains("shape [2, 2], expected (_, 20)"), "{err}");
        let err = read_npy(&p).unwrap().into_i64(&p, &[None, None]).unwrap_err().to_string();
        assert!(err.contains("expected <i8"), "{err}");
    }
}
