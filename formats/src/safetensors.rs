//! The validating safetensors reader: one `.safetensors` file, a `model.safetensors.index.json` with
//! its shards, or a Hugging Face model folder.
//!
//! Each shard's header is parsed by us (to keep the raw JSON keys and so detect duplicate tensor
//! names, which the `safetensors` crate silently collapses, last one winning) and checked: header
//! length against the file and [`Limits`], UTF-8, JSON shape, `__metadata__` values being strings,
//! known dtypes, overflow-free shape products, byte ranges matching shape × dtype, and the data
//! section covered exactly (no gaps, overlaps or trailing bytes). Then the `safetensors` crate's own
//! `SafeTensors::read_metadata` runs over the same bytes as a second opinion. For sharded models the
//! index and the shards must agree exactly, and shard names must be plain file names in the folder.
//!
//! Shapes are as stored: outermost dimension first (GGUF's order is the reverse).
//! [`SafetensorsModel::tensors`] is sorted by name, across all shards.
//!
//! Pickle checkpoints (`pytorch_model*.bin`, `*.pt`, `*.pth`, `*.ckpt`, `*.pkl`) are never opened:
//! unpickling can execute arbitrary code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::mmap::MappedFile;
use crate::{Error, ErrorKind, Limits};

/// The index file name Hugging Face uses for sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A tensor element type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// f64
    F64,
    /// f32
    F32,
    /// IEEE half
    F16,
    /// bfloat16
    BF16,
    /// i64
    I64,
    /// i32
    I32,
    /// i16
    I16,
    /// i8
    I8,
    /// u8
    U8,
    /// bool (one byte)
    Bool,
    /// float8 e4m3
    F8E4M3,
    /// float8 e5m2
    F8E5M2,
    /// Another whole-byte dtype the format defines (`U16`, `U32`, `U64`, `C64`, `F8_E8M0`), by name.
    Other(String),
}

impl Dtype {
    /// Parses a safetensors dtype string. `None` for unknown names and for sub-byte dtypes (`F4`,
    /// `F6_E2M3`, `F6_E3M2`), which we do not support.
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "U16" | "U32" | "U64" | "C64" | "F8_E8M0" => Dtype::Other(s.to_owned()),
            _ => return None,
        })
    }

    /// The name as written in safetensors headers.
    pub fn name(&self) -> &str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::Other(s) => s,
        }
    }

    /// Bytes per element.
    pub fn size_bytes(&self) -> u64 {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::Other(s) => match s.as_str() {
                "U16" => 2,
                "U32" => 4,
                "U64" | "C64" => 8,
                // F8_E8M0, and anything else constructed by hand.
                _ => 1,
            },
        }
    }

    /// Whether the converter can read it as floats (F32, F16, BF16).
    pub fn is_float_readable(&self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a (possibly sharded) safetensors model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensor {
    /// Name as stored.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first, as stored.
    pub shape: Vec<u64>,
    /// Index into [`SafetensorsModel::shard_paths`].
    pub shard: usize,
    /// Byte range `[start, end)` relative to the shard's data section (validated at open).
    pub data_offsets: [u64; 2],
}

impl StTensor {
    /// Number of elements (validated at open not to overflow).
    pub fn n_elements(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Size in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.data_offsets[1].saturating_sub(self.data_offsets[0])
    }
}

/// The validated header of one safetensors file (the no-file entry point, for tests and fuzzing).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedShard {
    /// File offset of the data section (8 + header length).
    pub data_start: u64,
    /// Tensors in data order (ascending offsets), each with `shard == 0`.
    pub tensors: Vec<StTensor>,
    /// The `__metadata__` map (empty if absent).
    pub metadata: BTreeMap<String, String>,
}

impl ParsedShard {
    /// Parses and validates a whole safetensors file held in `bytes`; `path` labels errors.
    pub fn parse(bytes: &[u8], path: &Path, limits: &Limits) -> Result<ParsedShard, Error> {
        parse_shard(bytes, limits).map_err(|kind| Error::new(path, kind))
    }
}

#[derive(Debug)]
struct Shard {
    map: MappedFile,
    data_start: u64,
}

/// An open, validated safetensors model; tensor data is borrowed from memory maps.
#[derive(Debug)]
pub struct SafetensorsModel {
    shard_paths: Vec<PathBuf>,
    shards: Vec<Shard>,
    metadata: Vec<BTreeMap<String, String>>,
    tensors: Vec<StTensor>,
    by_name: HashMap<String, usize>,
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a model folder (index if
    /// present, else `model.safetensors`, else the folder's only `*.safetensors`), with default limits.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsModel, Error> {
        SafetensorsModel::open_with_limits(path, &Limits::default())
    }

    /// As [`SafetensorsModel::open`], with the given limits.
    pub fn open_with_limits(
        path: impl AsRef<Path>,
        limits: &Limits,
    ) -> Result<SafetensorsModel, Error> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return open_index(&index, limits);
            }
            let single = path.join(SINGLE_FILE);
            if single.is_file() {
                return open_single(&single, limits);
            }
            let listing = list_dir(path)?;
            let st: Vec<&String> = listing
                .iter()
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            if let [only] = st.as_slice() {
                return open_single(&path.join(only), limits);
            }
            let pickles: Vec<String> = listing
                .iter()
                .filter(|n| is_pickle_name(n))
                .cloned()
                .collect();
            if !pickles.is_empty() {
                return Err(Error::new(
                    path,
                    ErrorKind::PickleRefused { files: pickles },
                ));
            }
            return Err(Error::new(path, ErrorKind::NoModelFound));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_pickle_name(&name) {
            return Err(Error::new(
                path,
                ErrorKind::PickleRefused { files: vec![name] },
            ));
        }
        if name.ends_with(".json") {
            return open_index(path, limits);
        }
        open_single(path, limits)
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's bytes, borrowed from its shard's map. Tensors from [`SafetensorsModel::tensors`]
    /// were validated at open; a hand-built one that does not fit yields an empty slice.
    pub fn data(&self, t: &StTensor) -> &[u8] {
        let Some(shard) = self.shards.get(t.shard) else {
            return &[];
        };
        let start = shard.data_start.checked_add(t.data_offsets[0]);
        let end = shard.data_start.checked_add(t.data_offsets[1]);
        match (start.map(usize::try_from), end.map(usize::try_from)) {
            (Some(Ok(s)), Some(Ok(e))) => shard.map.bytes().get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The shard files, in the order [`StTensor::shard`] indexes.
    pub fn shard_paths(&self) -> &[PathBuf] {
        &self.shard_paths
    }

    /// Each shard's `__metadata__` map, indexed like [`SafetensorsModel::shard_paths`].
    pub fn metadata(&self) -> &[BTreeMap<String, String>] {
        &self.metadata
    }

    /// Sum of all tensors' sizes in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(StTensor::n_bytes)
            .fold(0u64, u64::saturating_add)
    }
}

fn is_pickle_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (lower.starts_with("pytorch_model") && lower.ends_with(".bin"))
        || [".pt", ".pth", ".ckpt", ".pkl"]
            .iter()
            .any(|e| lower.ends_with(e))
}

fn list_dir(dir: &Path) -> Result<Vec<String>, Error> {
    let io = |source| {
        Error::new(
            dir,
            ErrorKind::Io {
                op: "list directory",
                source,
            },
        )
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn open_shard(path: &Path, limits: &Limits) -> Result<(Shard, ParsedShard), Error> {
    let map = MappedFile::open(path)
        .map_err(|source| Error::new(path, ErrorKind::Io { op: "open", source }))?;
    let parsed = ParsedShard::parse(map.bytes(), path, limits)?;
    Ok((
        Shard {
            map,
            data_start: parsed.data_start,
        },
        parsed,
    ))
}

fn open_single(path: &Path, limits: &Limits) -> Result<SafetensorsModel, Error> {
    let (shard, parsed) = open_shard(path, limits)?;
    let mut tensors = parsed.tensors;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok(SafetensorsModel {
        shard_paths: vec![path.to_path_buf()],
        shards: vec![shard],
        metadata: vec![parsed.metadata],
        tensors,
        by_name,
    })
}

/// The parts of an index file we use; `weight_map` keeps its raw order and duplicates.
#[derive(Deserialize)]
struct IndexFile {
    weight_map: OrderedMap<String>,
}

fn open_index(index_path: &Path, limits: &Limits) -> Result<SafetensorsModel, Error> {
    let ierr = |kind| Error::new(index_path, kind);
    let text =
        std::fs::read(index_path).map_err(|source| ierr(ErrorKind::Io { op: "read", source }))?;
    let text = std::str::from_utf8(&text).map_err(|_| {
        ierr(ErrorKind::InvalidUtf8 {
            what: "index file".into(),
            offset: 0,
        })
    })?;
    let index: IndexFile = serde_json::from_str(text).map_err(|e| {
        ierr(ErrorKind::BadHeader {
            reason: format!("index: {e}"),
        })
    })?;
    let dir = match index_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };

    let mut weight_map: HashMap<&str, &str> = HashMap::new();
    let mut shard_names: BTreeSet<&str> = BTreeSet::new();
    for (tensor, shard) in &index.weight_map.0 {
        if weight_map.insert(tensor, shard).is_some() {
            return Err(ierr(ErrorKind::DuplicateTensorName {
                name: tensor.clone(),
            }));
        }
        shard_names.insert(shard);
    }
    if weight_map.len() as u64 > limits.max_tensors {
        return Err(ierr(ErrorKind::LimitExceeded {
            what: "tensors in index".into(),
            offset: 0,
            declared: weight_map.len() as u64,
            limit: limits.max_tensors,
        }));
    }
    for name in &shard_names {
        if !is_plain_file_name(name) {
            return Err(ierr(ErrorKind::UnsafeShardPath {
                shard: (*name).to_owned(),
            }));
        }
        if !dir.join(name).is_file() {
            return Err(ierr(ErrorKind::MissingShard {
                shard: (*name).to_owned(),
            }));
        }
    }

    let mut shards = Vec::new();
    let mut shard_paths = Vec::new();
    let mut metadata = Vec::new();
    let mut tensors: Vec<StTensor> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (si, name) in shard_names.iter().enumerate() {
        let path = dir.join(name);
        let (shard, parsed) = open_shard(&path, limits)?;
        for mut t in parsed.tensors {
            if let Some(&first) = seen.get(&t.name) {
                let first_name = shard_names.iter().nth(first).copied().unwrap_or_default();
                return Err(ierr(ErrorKind::DuplicateAcrossShards {
                    tensor: t.name,
                    first: first_name.to_owned(),
                    second: (*name).to_owned(),
                }));
            }
            if weight_map.get(t.name.as_str()) != Some(name) {
                return Err(ierr(ErrorKind::ShardTensorNotInIndex {
                    tensor: t.name,
                    shard: (*name).to_owned(),
                }));
            }
            seen.insert(t.name.clone(), si);
            t.shard = si;
            tensors.push(t);
        }
        shards.push(shard);
        shard_paths.push(path);
        metadata.push(parsed.metadata);
    }
    for (tensor, shard) in &index.weight_map.0 {
        if !seen.contains_key(tensor) {
            return Err(ierr(ErrorKind::IndexTensorNotInShard {
                tensor: tensor.clone(),
                shard: shard.clone(),
            }));
        }
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let by_name = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    Ok(SafetensorsModel {
        shard_paths,
        shards,
        metadata,
        tensors,
        by_name,
    })
}

/// A shard name must be one normal path component: no `..`, no root, no separators.
fn is_plain_file_name(name: &str) -> bool {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.contains('\0') {
        return false;
    }
    let mut comps = Path::new(name).components();
    matches!(
        (comps.next(), comps.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// A JSON object read as its raw list of entries, in order, keeping duplicates.
struct OrderedMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                // No size hint from untrusted input: grow as entries actually arrive.
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

fn bad(reason: impl Into<String>) -> ErrorKind {
    ErrorKind::BadHeader {
        reason: reason.into(),
    }
}

fn parse_shard(bytes: &[u8], limits: &Limits) -> Result<ParsedShard, ErrorKind> {
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(ErrorKind::HeaderTooSmall { file_len });
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(arr);
    if header_len > limits.max_safetensors_header {
        return Err(ErrorKind::LimitExceeded {
            what: "safetensors header length".into(),
            offset: 0,
            declared: header_len,
            limit: limits.max_safetensors_header,
        });
    }
    if header_len > file_len - 8 {
        return Err(ErrorKind::LengthExceedsData {
            what: "safetensors header length".into(),
            offset: 0,
            declared: header_len,
            available: file_len - 8,
        });
    }
    // header_len <= file_len - 8, so it fits in usize and the slice is in bounds.
    let data_start = 8 + header_len;
    let header = bytes.get(8..data_start as usize).unwrap_or(&[]);
    let text = std::str::from_utf8(header).map_err(|_| ErrorKind::InvalidUtf8 {
        what: "safetensors header".into(),
        offset: 8,
    })?;
    // Every entry must be an object. Each is read as its raw field list, not a `serde_json::Map`,
    // because a map keeps only the last of repeated fields: `{"shape":[0],"shape":[2]}` would
    // silently mean [2] to us while other readers take the first copy or refuse the file.
    let entries: OrderedMap<OrderedMap<serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;

    let mut metadata = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut tensors = Vec::new();
    for (name, fields) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(ErrorKind::DuplicateTensorName { name });
        }
        let mut field_names = HashSet::new();
        for (field, _) in &fields.0 {
            if !field_names.insert(field.as_str()) {
                return Err(ErrorKind::DuplicateField {
                    entry: name.clone(),
                    field: field.clone(),
                });
            }
        }
        if name == "__metadata__" {
            for (k, v) in fields.0 {
                let s = v
                    .as_str()
                    .ok_or_else(|| ErrorKind::MetadataNotString { key: k.clone() })?;
                metadata.insert(k, s.to_owned());
            }
            continue;
        }
        if tensors.len() as u64 >= limits.max_tensors {
            return Err(ErrorKind::LimitExceeded {
                what: "tensor count".into(),
                offset: 8,
                declared: tensors.len() as u64 + 1,
                limit: limits.max_tensors,
            });
        }
        tensors.push(parse_entry(name, &fields.0)?);
    }

    // Coverage: sorted by start, each tensor must begin where the previous ended, and the last must
    // end exactly at the end of the file.
    tensors.sort_by_key(|t| (t.data_offsets[0], t.data_offsets[1]));
    let data_len = file_len - data_start;
    let mut pos = 0u64;
    for t in &tensors {
        let [start, end] = t.data_offsets;
        if start > pos {
            return Err(ErrorKind::DataGap {
                tensor: t.name.clone(),
                gap_start: pos,
                gap_end: start,
            });
        }
        if start < pos {
            let other = tensors
                .iter()
                .find(|o| {
                    o.name != t.name && o.data_offsets[0] <= start && start < o.data_offsets[1]
                })
                .map(|o| o.name.clone())
                .unwrap_or_default();
            return Err(ErrorKind::TensorOverlap {
                tensor: t.name.clone(),
                offset: start,
                other,
                other_end: pos,
            });
        }
        if end > data_len {
            return Err(ErrorKind::TensorPastEnd {
                tensor: t.name.clone(),
                offset: start,
                n_bytes: end - start,
                available: data_len,
            });
        }
        pos = end;
    }
    if pos < data_len {
        return Err(ErrorKind::TrailingBytes {
            trailing: data_len - pos,
            data_len,
        });
    }

    // Second opinion from the reference implementation over the same bytes.
    safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ErrorKind::SafetensorsRejected {
        reason: e.to_string(),
    })?;

    Ok(ParsedShard {
        data_start,
        tensors,
        metadata,
    })
}

/// Builds one tensor from its entry's fields (already checked to be unique).
fn parse_entry(
    name: String,
    fields: &[(String, serde_json::Value)],
) -> Result<StTensor, ErrorKind> {
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let dtype_str = get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad(format!("tensor {name:?}: missing or non-string dtype")))?;
    let dtype = Dtype::parse(dtype_str).ok_or_else(|| ErrorKind::UnknownDtype {
        tensor: name.clone(),
        dtype: dtype_str.to_owned(),
    })?;
    let shape_json = get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad(format!("tensor {name:?}: missing or non-array shape")))?;
    let mut shape = Vec::with_capacity(shape_json.len());
    for d in shape_json {
        shape.push(
            d.as_u64()
                .ok_or_else(|| bad(format!("tensor {name:?}: shape entry {d} is not a u64")))?,
        );
    }
    let offs = get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad(format!("tensor {name:?}: data_offsets is not a pair")))?;
    let mut pair = [0u64; 2];
    for (slot, o) in pair.iter_mut().zip(offs) {
        *slot = o
            .as_u64()
            .ok_or_else(|| bad(format!("tensor {name:?}: data offset {o} is not a u64")))?;
    }
    let expected = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size_bytes()))
        // The safetensors crate computes in usize bits; stay within what it can represent.
        .filter(|&b| b <= (usize::MAX / 8) as u64)
        .ok_or_else(|| ErrorKind::ShapeOverflow {
            tensor: name.clone(),
            dims: shape.clone(),
        })?;
    let [start, end] = pair;
    if end < start || end - start != expected {
        return Err(ErrorKind::TensorSizeMismatch {
            tensor: name,
            start,
            end,
            expected,
        });
    }
    Ok(StTensor {
        name,
        dtype,
        shape,
        shard: 0,
        data_offsets: pair,
    })
}
