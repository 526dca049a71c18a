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

use std::collections::{HashMap, HashSet};
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

/// The metadata key of a split file's index (u16, 0-based), as llama.cpp's gguf-split writes it.
pub const KEY_SPLIT_NO: &str = "split.no";
/// The metadata key of the number of files of a split set (u16).
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// The metadata key of the tensors in the whole split set (i32).
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// One file of a [`GgufFile`].
#[derive(Debug)]
struct Part {
    path: PathBuf,
    map: MappedFile,
    header: ParsedHeader,
}

impl Part {
    fn open(path: &Path, limits: &Limits) -> Result<Part, Error> {
        let map = MappedFile::open(path)
            .map_err(|source| Error::new(path, ErrorKind::Io { op: "open", source }))?;
        let header = ParsedHeader::parse(map.bytes(), path, limits)?;
        Ok(Part {
            path: path.to_path_buf(),
            map,
            header,
        })
    }
}

/// An open, fully validated GGUF model whose tensor data is borrowed from memory maps: one file,
/// or a split set as llama.cpp's gguf-split writes it (`PREFIX-00001-of-0000N.gguf`, ...), opened
/// from its first file and seen as the one merged model llama.cpp loads from it: the first file's
/// metadata, every file's tensors.
#[derive(Debug)]
pub struct GgufFile {
    /// At least one; the first is the file opened.
    parts: Vec<Part>,
    /// Every part's tensor infos, in part order then file order (offsets relative to their own
    /// part's data section).
    tensors: Vec<TensorInfo>,
    /// The part holding each tensor.
    part_of: Vec<usize>,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and validates `path` with default [`Limits`]. A file that is the first of a split set
    /// (`split.count` > 1) opens the whole set; see [`GgufFile::open_with_limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, Error> {
        GgufFile::open_with_limits(path, &Limits::default())
    }

    /// Opens and validates `path` with the given limits. When its `split.count` is above 1 it
    /// must be the first file of its set (`split.no` 0, named `PREFIX-00001-of-0000N.gguf`, as
    /// llama.cpp requires), and every other part is opened by name and checked: present, no part
    /// beyond the count, `split.no` / `split.count` / `split.tensors.count` continuing the set,
    /// tensor names unique across the parts, and the total as declared. Any failure names the
    /// file at fault.
    pub fn open_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<GgufFile, Error> {
        let path = path.as_ref();
        let first = Part::open(path, limits)?;
        let md = &first.header.metadata;
        let count = md.get(KEY_SPLIT_COUNT).and_then(Value::as_u64).unwrap_or(1);
        if count <= 1 {
            return GgufFile::from_parts(vec![first]);
        }
        let no = md.get(KEY_SPLIT_NO).and_then(Value::as_u64).unwrap_or(0);
        if no != 0 {
            return Err(Error::new(path, ErrorKind::SplitNotFirst { no, count }));
        }
        let declared = md
            .get(KEY_SPLIT_TENSORS_COUNT)
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                Error::new(
                    path,
                    ErrorKind::SplitKeyMissing {
                        key: KEY_SPLIT_TENSORS_COUNT,
                    },
                )
            })?;
        let s = path.to_string_lossy();
        let prefix = s
            .strip_suffix(&format!("-00001-of-{count:05}.gguf"))
            .ok_or_else(|| Error::new(path, ErrorKind::SplitBadName { no, count }))?
            .to_string();
        let part_path = |i: u64| PathBuf::from(format!("{prefix}-{:05}-of-{count:05}.gguf", i + 1));
        let mut parts = vec![first];
        for i in 1..count {
            let p = part_path(i);
            if !p.exists() {
                return Err(Error::new(p, ErrorKind::SplitPartMissing { no: i, count }));
            }
            let part = Part::open(&p, limits)?;
            let m = &part.header.metadata;
            let found = (
                m.get(KEY_SPLIT_NO).and_then(Value::as_u64),
                m.get(KEY_SPLIT_COUNT).and_then(Value::as_u64),
                m.get(KEY_SPLIT_TENSORS_COUNT).and_then(Value::as_i64),
            );
            if found != (Some(i), Some(count), Some(declared)) {
                let small = |v: Option<u64>| v.and_then(|x| u32::try_from(x).ok());
                return Err(Error::new(
                    p,
                    ErrorKind::SplitKeysMismatch {
                        no: small(found.0),
                        count: small(found.1),
                        tensors: found.2,
                        expected_no: u32::try_from(i).unwrap_or(u32::MAX),
                        expected_count: u32::try_from(count).unwrap_or(u32::MAX),
                        expected_tensors: declared,
                    },
                ));
            }
            parts.push(part);
        }
        let extra = part_path(count);
        if extra.exists() {
            return Err(Error::new(extra, ErrorKind::SplitPartExtra { count }));
        }
        let total: u64 = parts.iter().map(|p| p.header.tensors.len() as u64).sum();
        if i64::try_from(total).ok() != Some(declared) {
            return Err(Error::new(
                path,
                ErrorKind::SplitTensorCount {
                    declared,
                    found: total,
                },
            ));
        }
        GgufFile::from_parts(parts)
    }

    /// Opens exactly the file at `path` (one part of a split set is then just that part: its own
    /// metadata and tensors), with default [`Limits`].
    pub fn open_part(path: impl AsRef<Path>) -> Result<GgufFile, Error> {
        GgufFile::from_parts(vec![Part::open(path.as_ref(), &Limits::default())?])
    }

    fn from_parts(parts: Vec<Part>) -> Result<GgufFile, Error> {
        let mut tensors = Vec::new();
        let mut part_of = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, p) in parts.iter().enumerate() {
            for t in &p.header.tensors {
                if let Some(&j) = by_name.get(&t.name) {
                    let first = parts
                        .get(part_of.get(j).copied().unwrap_or(0))
                        .map(|q| q.path.clone())
                        .unwrap_or_default();
                    return Err(Error::new(
                        &p.path,
                        ErrorKind::DuplicateAcrossSplits {
                            tensor: t.name.clone(),
                            first,
                        },
                    ));
                }
                by_name.insert(t.name.clone(), tensors.len());
                tensors.push(t.clone());
                part_of.push(i);
            }
        }
        Ok(GgufFile {
            parts,
            tensors,
            part_of,
            by_name,
        })
    }

    fn first(&self) -> &Part {
        // `from_parts` is never given an empty list.
        &self.parts[0]
    }

    /// The parsed header of the first (or only) file.
    pub fn header(&self) -> &ParsedHeader {
        &self.first().header
    }

    /// GGUF version (2 or 3) of the first file.
    pub fn version(&self) -> u32 {
        self.first().header.version
    }

    /// Alignment of the first file's data section and tensors.
    pub fn alignment(&self) -> u32 {
        self.first().header.alignment
    }

    /// Metadata in file order: the first file's (a split set's model metadata and its split keys).
    pub fn metadata(&self) -> &Metadata {
        &self.first().header.metadata
    }

    /// Tensor infos of every file, in split order then file order. Offsets are relative to the
    /// data section of the file holding the tensor ([`GgufFile::tensor_location`]).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    fn part_index(&self, info: &TensorInfo) -> Option<usize> {
        self.by_name
            .get(&info.name)
            .and_then(|&i| self.part_of.get(i))
            .copied()
    }

    /// The tensor's bytes, borrowed from its file's map. Every info from [`GgufFile::tensors`] was
    /// checked at open to lie inside its file; an info from elsewhere that does not fit yields an
    /// empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        match self.part_index(info).and_then(|i| self.parts.get(i)) {
            Some(p) => p.header.tensor_data(p.map.bytes(), info),
            None => &[],
        }
    }

    /// Which file holds the tensor (its index in [`GgufFile::paths`]) and the tensor's absolute
    /// offset in that file.
    pub fn tensor_location(&self, info: &TensorInfo) -> Option<(usize, u64)> {
        let i = self.part_index(info)?;
        let p = self.parts.get(i)?;
        Some((i, p.header.data_offset.saturating_add(info.offset)))
    }

    /// File offset of the first file's data section.
    pub fn data_offset(&self) -> u64 {
        self.first().header.data_offset
    }

    /// Bytes on disk, all files together.
    pub fn file_size(&self) -> u64 {
        self.parts.iter().map(|p| p.header.file_size).sum()
    }

    /// The path it was opened from (the first file of a split set).
    pub fn path(&self) -> &Path {
        &self.first().path
    }

    /// Every file, in split order (one for an unsplit model).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.path.clone()).collect()
    }

    /// Every file's own header (metadata, tensors), in split order.
    pub fn part_headers(&self) -> impl Iterator<Item = (&Path, &ParsedHeader)> {
        self.parts.iter().map(|p| (p.path.as_path(), &p.header))
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
