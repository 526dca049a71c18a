//! The validating GGUF reader.
//!
//! Every field is read through [`Cursor`], which knows how many bytes remain; every count and length is
//! checked against those bytes and against [`Limits`] before anything is allocated for it. Choices
//! where ggml's `gguf.cpp` is looser or silent, and what we do:
//! - `n_dims == 0`: ggml's reader accepts it (a scalar) but its writer never produces it; we refuse it.
//! - a dimension of 0: ggml accepts zero-element tensors, so do we (their data is empty), but only
//!   while the product of their other dimensions is at most [`Limits::max_empty_tensor_extent`]
//!   (2^24 by default). A tensor with data is bounded by the file (its rows must fit in the bytes
//!   there), so every loop over its rows is too; an empty one is not, and `[0, 2^62]` would hand
//!   2^62 zero-byte rows to any code that walks rows (quantize, export, inspect). We refuse such
//!   dimensions rather than prove that no path ever walks them.
//! - tensor offsets: ggml requires them packed in file order; we accept any order but require each to
//!   be aligned, inside the file, and not overlapping another (checked after sorting by offset).
//! - string values must be UTF-8 (ggml does not check values, only uses them as bytes).
//! - bytes after the last tensor are allowed (writers pad the last tensor).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{
    align_up, tensor_size, Array, Metadata, TensorInfo, Value, ValueType, ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT, MAGIC,
};
use crate::mmap::MappedFile;
use crate::{Error, ErrorKind, GgmlType, Limits};

/// Smallest possible key/value pair: 8-byte length + 1-byte key + 4-byte type + 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor info: 8-byte name length + 1-byte name + n_dims + one dim + type + offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// Everything in a GGUF header, validated against the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Alignment of the data section and every tensor.
    pub alignment: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// File offset of the data section.
    pub data_offset: u64,
    /// Length of the parsed buffer (the file size).
    pub file_size: u64,
}

impl ParsedHeader {
    /// Parses and validates the GGUF file held in `bytes`. `path` is only used to label errors.
    /// This is the no-file entry point (tests, fuzzing); [`GgufFile::open`] uses it on a memory map.
    pub fn parse(bytes: &[u8], path: &Path, limits: &Limits) -> Result<ParsedHeader, Error> {
        parse_inner(bytes, limits).map_err(|kind| Error::new(path, kind))
    }

    /// The tensor's bytes within `bytes` (the same buffer given to [`ParsedHeader::parse`]).
    /// Empty if `info` does not fit in `bytes` (only possible for an info not from this header).
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], info: &TensorInfo) -> &'a [u8] {
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) => usize::try_from(s)
                .ok()
                .zip(usize::try_from(e).ok())
                .and_then(|(s, e)| bytes.get(s..e))
                .unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// An open, fully validated GGUF file whose tensor data is borrowed from a memory map.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: MappedFile,
    header: ParsedHeader,
}

impl GgufFile {
    /// Opens and validates `path` with default [`Limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, Error> {
        GgufFile::open_with_limits(path, &Limits::default())
    }

    /// Opens and validates `path` with the given limits.
    pub fn open_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<GgufFile, Error> {
        let path = path.as_ref();
        let map = MappedFile::open(path)
            .map_err(|source| Error::new(path, ErrorKind::Io { op: "open", source }))?;
        let header = ParsedHeader::parse(map.bytes(), path, limits)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &ParsedHeader {
        &self.header
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Alignment of the data section and tensors.
    pub fn alignment(&self) -> u32 {
        self.header.alignment
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's bytes, borrowed from the map. Every info from [`GgufFile::tensors`] was checked
    /// at open to lie inside the file; an info from elsewhere that does not fit yields an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        self.header.tensor_data(self.map.bytes(), info)
    }

    /// File offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// File size in bytes.
    pub fn file_size(&self) -> u64 {
        self.header.file_size
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A bounds-checked little-endian reader over the whole file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], ErrorKind> {
        let truncated = || ErrorKind::Truncated {
            what: what(),
            offset: self.offset(),
            needed: n,
            available: self.remaining(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ErrorKind> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, ErrorKind> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, ErrorKind> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ErrorKind> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ErrorKind> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what remains.
    fn check_fits(
        &self,
        count: u64,
        min_size: u64,
        field_offset: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), ErrorKind> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(ErrorKind::LengthExceedsData {
                what: what(),
                offset: field_offset,
                declared: count,
                available: self.remaining(),
            })
        }
    }

    /// A u64 length followed by that many bytes, checked against `limit` and the bytes remaining.
    fn string_bytes(
        &mut self,
        limit: u64,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], ErrorKind> {
        let at = self.offset();
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > limit {
            return Err(ErrorKind::LimitExceeded {
                what: format!("length of {}", what()),
                offset: at,
                declared: len,
                limit,
            });
        }
        self.check_fits(len, 1, at, &|| format!("length of {}", what()))?;
        self.take(len, what)
    }

    fn string(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<String, ErrorKind> {
        let at = self.offset();
        let raw = self.string_bytes(limit, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| ErrorKind::InvalidUtf8 {
                what: what(),
                offset: at,
            })
    }
}

fn parse_inner(bytes: &[u8], limits: &Limits) -> Result<ParsedHeader, ErrorKind> {
    let mut c = Cursor { bytes, pos: 0 };

    let magic = bytes.get(..4).unwrap_or(bytes);
    if magic != MAGIC {
        return Err(ErrorKind::BadMagic {
            found: magic.to_vec(),
        });
    }
    c.pos = 4;

    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        // A big-endian writer stores 3 (or 2) as 0x03000000: the low 16 bits are zero, so no real
        // little-endian version could look like this.
        v if v & 0xFFFF == 0 && v != 0 => return Err(ErrorKind::BigEndian { raw: v }),
        v => return Err(ErrorKind::UnsupportedVersion { version: v }),
    }

    let at = c.offset();
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let kv_at = c.offset();
    let n_kv = c.u64(&|| "metadata count".into())?;
    if n_tensors > limits.max_tensors {
        return Err(ErrorKind::LimitExceeded {
            what: "tensor count".into(),
            offset: at,
            declared: n_tensors,
            limit: limits.max_tensors,
        });
    }
    if n_kv > limits.max_kv {
        return Err(ErrorKind::LimitExceeded {
            what: "metadata count".into(),
            offset: kv_at,
            declared: n_kv,
            limit: limits.max_kv,
        });
    }
    c.check_fits(n_kv, MIN_KV_BYTES, kv_at, &|| "metadata count".into())?;
    c.check_fits(n_tensors, MIN_TENSOR_INFO_BYTES, at, &|| {
        "tensor count".into()
    })?;
    // Both counts were checked against the bytes remaining, so these capacities are bounded by the
    // file size divided by the minimal entry size.
    let mut metadata = Metadata::new();
    for _ in 0..n_kv {
        let key_at = c.offset();
        let key = c.string(limits.max_string_len, &|| {
            format!("metadata key at offset {key_at}")
        })?;
        if key.is_empty() {
            return Err(ErrorKind::EmptyKey { offset: key_at });
        }
        if metadata.contains_key(&key) {
            return Err(ErrorKind::DuplicateKey {
                key,
                offset: key_at,
            });
        }
        let type_at = c.offset();
        let type_id = c.u32(&|| format!("value type of {key:?}"))?;
        let vt = ValueType::from_id(type_id).ok_or_else(|| ErrorKind::UnknownValueType {
            key: key.clone(),
            offset: type_at,
            type_id,
        })?;
        let value = read_value(&mut c, vt, &key, 0, limits)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a,
        Some(Value::U32(a)) => {
            return Err(ErrorKind::BadAlignment {
                alignment: (*a).into(),
            })
        }
        Some(other) => {
            return Err(ErrorKind::WrongValueType {
                key: ALIGNMENT_KEY.into(),
                expected: ValueType::U32,
                found: other.value_type(),
            })
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
    let mut names: HashSet<String> = HashSet::with_capacity(tensors.capacity());
    for index in 0..n_tensors {
        let name_at = c.offset();
        let len_peek = c.u64(&|| format!("name length of tensor #{index}"))?;
        if len_peek > limits.max_tensor_name_len as u64 {
            // Show as much of the name as is present, bounded, so the error says which tensor.
            let shown = bytes
                .get(c.pos..)
                .unwrap_or(&[])
                .iter()
                .take(limits.max_tensor_name_len.min(256))
                .copied()
                .collect::<Vec<u8>>();
            return Err(ErrorKind::TensorNameTooLong {
                name: String::from_utf8_lossy(&shown).into_owned(),
                len: len_peek,
                limit: limits.max_tensor_name_len as u64,
            });
        }
        c.pos = usize::try_from(name_at).unwrap_or(usize::MAX);
        let name = c.string(limits.max_string_len, &|| {
            format!("name of tensor #{index}")
        })?;
        if name.is_empty() {
            return Err(ErrorKind::EmptyTensorName { index });
        }
        if names.contains(&name) {
            return Err(ErrorKind::DuplicateTensorName { name });
        }

        let nd_at = c.offset();
        let n_dims = c.u32(&|| format!("n_dims of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > limits.max_n_dims {
            return Err(ErrorKind::BadDimCount {
                tensor: name,
                n_dims: n_dims.into(),
                limit: limits.max_n_dims.into(),
            });
        }
        c.check_fits(n_dims.into(), 8, nd_at, &|| {
            format!("n_dims of tensor {name:?}")
        })?;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {j} of tensor {name:?}"))?);
        }
        let type_at = c.offset();
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| ErrorKind::UnknownTensorType {
            tensor: name.clone(),
            offset: type_at,
            type_id,
        })?;
        let n_bytes = tensor_size(&name, &dims, ggml_type, limits.max_n_dims)?;
        if dims.contains(&0) {
            let extent = dims
                .iter()
                .filter(|&&d| d != 0)
                .fold(1u64, |a, &d| a.saturating_mul(d));
            if extent > limits.max_empty_tensor_extent {
                return Err(ErrorKind::LimitExceeded {
                    what: format!(
                        "product of the non-zero dimensions of zero-element tensor {name:?} {dims:?}"
                    ),
                    offset: nd_at,
                    declared: extent,
                    limit: limits.max_empty_tensor_extent,
                });
            }
        }
        let offset = c.u64(&|| format!("data offset of tensor {name:?}"))?;
        if offset % u64::from(alignment) != 0 {
            return Err(ErrorKind::MisalignedTensor {
                tensor: name,
                offset,
                alignment: alignment.into(),
            });
        }
        names.insert(name.clone());
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let header_end = c.offset();
    let file_size = bytes.len() as u64;
    // Like gguf.cpp: the data section starts at the next alignment boundary, but only when there is
    // data; a file without tensors may end right after its header.
    let data_offset = if n_tensors > 0 {
        let d = align_up(header_end, alignment.into()).ok_or_else(|| ErrorKind::SizeOverflow {
            what: "data section offset".into(),
        })?;
        if d > file_size {
            return Err(ErrorKind::Truncated {
                what: "padding before the data section".into(),
                offset: header_end,
                needed: d - header_end,
                available: file_size - header_end,
            });
        }
        d
    } else {
        header_end
    };
    let data_len = file_size - data_offset;

    // The padded total must be representable (a writer needs it; gguf.cpp checks it too).
    let mut padded_total: u64 = 0;
    for t in &tensors {
        padded_total = align_up(t.n_bytes, alignment.into())
            .and_then(|p| padded_total.checked_add(p))
            .ok_or_else(|| ErrorKind::SizeOverflow {
                what: format!("padded size of the data section at tensor {:?}", t.name),
            })?;
    }

    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.n_bytes));
    let mut furthest: Option<(&TensorInfo, u64)> = None;
    for t in order {
        let end = t.offset.checked_add(t.n_bytes).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(ErrorKind::TensorPastEnd {
                tensor: t.name.clone(),
                offset: t.offset,
                n_bytes: t.n_bytes,
                available: data_len,
            });
        };
        if let Some((prev, prev_end)) = furthest {
            if t.n_bytes > 0 && t.offset < prev_end {
                return Err(ErrorKind::TensorOverlap {
                    tensor: t.name.clone(),
                    offset: t.offset,
                    other: prev.name.clone(),
                    other_end: prev_end,
                });
            }
        }
        if furthest.is_none_or(|(_, e)| end > e) {
            furthest = Some((t, end));
        }
    }

    Ok(ParsedHeader {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
        file_size,
    })
}

/// Reads one value of type `vt`. `depth` is the number of arrays enclosing it.
fn read_value(
    c: &mut Cursor<'_>,
    vt: ValueType,
    key: &str,
    depth: u32,
    limits: &Limits,
) -> Result<Value, ErrorKind> {
    let what = || format!("value of {key:?}");
    Ok(match vt {
        ValueType::U8 => Value::U8(c.u8(&what)?),
        ValueType::I8 => Value::I8(c.u8(&what)? as i8),
        ValueType::U16 => Value::U16(c.u16(&what)?),
        ValueType::I16 => Value::I16(c.u16(&what)? as i16),
        ValueType::U32 => Value::U32(c.u32(&what)?),
        ValueType::I32 => Value::I32(c.u32(&what)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        ValueType::U64 => Value::U64(c.u64(&what)?),
        ValueType::I64 => Value::I64(c.u64(&what)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        ValueType::Bool => {
            let at = c.offset();
            match c.u8(&what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(ErrorKind::InvalidBool {
                        key: key.to_owned(),
                        offset: at,
                        byte,
                    })
                }
            }
        }
        ValueType::String => Value::String(c.string(limits.max_string_len, &what)?),
        ValueType::Array => {
            let at = c.offset();
            let depth = depth + 1;
            if depth > limits.max_array_depth {
                return Err(ErrorKind::ArrayTooDeep {
                    key: key.to_owned(),
                    offset: at,
                    depth,
                    limit: limits.max_array_depth,
                });
            }
            let type_id = c.u32(&|| format!("array element type of {key:?}"))?;
            let elem_type =
                ValueType::from_id(type_id).ok_or_else(|| ErrorKind::UnknownValueType {
                    key: key.to_owned(),
                    offset: at,
                    type_id,
                })?;
            let count_at = c.offset();
            let count = c.u64(&|| format!("array length of {key:?}"))?;
            if count > limits.max_array_len {
                return Err(ErrorKind::LimitExceeded {
                    what: format!("array length of {key:?}"),
                    offset: count_at,
                    declared: count,
                    limit: limits.max_array_len,
                });
            }
            c.check_fits(count, elem_type.min_encoded_size(), count_at, &|| {
                format!("array length of {key:?}")
            })?;
            // `count` fits in the remaining bytes (checked just above). The up-front reservation is
            // capped further, so a hostile count costs memory only as its elements actually parse.
            let mut values = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
            for _ in 0..count {
                values.push(read_value(c, elem_type, key, depth, limits)?);
            }
            Value::Array(Array { elem_type, values })
        }
    })
}
