//! The crate's error type: which file, and exactly what was wrong with it.

use std::path::PathBuf;

use crate::gguf::ValueType;
use crate::GgmlType;

/// An error from reading or writing a model file. `Display` prints `"{path}: {kind}"`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct Error {
    /// The file (or folder) the error is about.
    pub path: PathBuf,
    /// What went wrong, with the structured details.
    pub kind: ErrorKind,
}

impl Error {
    /// Builds an error about `path`.
    pub fn new(path: impl Into<PathBuf>, kind: ErrorKind) -> Error {
        Error {
            path: path.into(),
            kind,
        }
    }
}

/// One variant per class of failure. Offsets are byte offsets from the start of the file unless the
/// field says otherwise. Strings taken from files are printed with `{:?}` so control characters and
/// odd Unicode stay visible and harmless.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An operating-system I/O error.
    #[error("{op}: {source}")]
    Io {
        /// What we were doing ("open", "read", "rename", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- GGUF header ----
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first (up to four) bytes of the file.
        found: Vec<u8>,
    },
    /// The version field reads as a valid version only when byte-swapped: a big-endian GGUF.
    #[error("big-endian GGUF files are not supported (version field {raw:#010x})")]
    BigEndian {
        /// The version field as read little-endian.
        raw: u32,
    },
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// The version in the file.
        version: u32,
    },
    /// A fixed-size field runs past the end of the file.
    #[error("truncated: {what} at offset {offset} needs {needed} bytes, only {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A length or count cannot possibly fit in the bytes that remain.
    #[error("{what} at offset {offset} declares {declared}, which cannot fit in the {available} bytes that remain")]
    LengthExceedsData {
        /// What the length or count is of.
        what: String,
        /// Where the length field is.
        offset: u64,
        /// The length or count in the file.
        declared: u64,
        /// Bytes left after the field.
        available: u64,
    },
    /// A length or count exceeds a configured [`crate::Limits`] bound.
    #[error("{what} at offset {offset} is {declared}, above the limit of {limit}")]
    LimitExceeded {
        /// What exceeded the limit.
        what: String,
        /// Where the field is.
        offset: u64,
        /// The value in the file.
        declared: u64,
        /// The limit.
        limit: u64,
    },
    /// A metadata value type id outside the 13 GGUF types.
    #[error("key {key:?}: unknown value type {type_id} at offset {offset}")]
    UnknownValueType {
        /// The key whose value (or array element type) is bad.
        key: String,
        /// Where the type field is.
        offset: u64,
        /// The id found.
        type_id: u32,
    },
    /// Arrays nested deeper than the limit.
    #[error("key {key:?}: arrays nested {depth} deep at offset {offset}, limit is {limit}")]
    ArrayTooDeep {
        /// The key.
        key: String,
        /// Where the offending array starts.
        offset: u64,
        /// Its depth.
        depth: u32,
        /// The limit.
        limit: u32,
    },
    /// A bool byte other than 0 or 1.
    #[error("key {key:?}: bool byte {byte} at offset {offset} is neither 0 nor 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// Where the byte is.
        offset: u64,
        /// The byte.
        byte: u8,
    },
    /// A metadata key of length zero.
    #[error("empty metadata key at offset {offset}")]
    EmptyKey {
        /// Where the key's length field is.
        offset: u64,
    },
    /// The same metadata key twice.
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second occurrence starts.
        offset: u64,
    },
    /// Bytes that should be UTF-8 text are not.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// A value of the wrong type for a key with a defined meaning (e.g. `general.alignment`).
    #[error("key {key:?} must be {expected:?}, found {found:?}")]
    WrongValueType {
        /// The key.
        key: String,
        /// The type the key requires.
        expected: ValueType,
        /// The type in the file (or given to the writer).
        found: ValueType,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("alignment {alignment} is not a power of two")]
    BadAlignment {
        /// The value.
        alignment: u64,
    },
    /// An array element whose type differs from the array's declared element type (writer).
    #[error("key {key:?}: array declares elements of type {expected:?} but holds a {found:?}")]
    ArrayTypeMismatch {
        /// The key.
        key: String,
        /// The declared element type.
        expected: ValueType,
        /// The element type found.
        found: ValueType,
    },

    // ---- tensors (GGUF and safetensors) ----
    /// A tensor name of length zero.
    #[error("tensor #{index} has an empty name")]
    EmptyTensorName {
        /// Position of the tensor in the file's tensor list.
        index: u64,
    },
    /// The same tensor name twice in one file.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensorName {
        /// The name.
        name: String,
    },
    /// A tensor name longer than the limit.
    #[error("tensor name {name:?} is {len} bytes, limit is {limit}")]
    TensorNameTooLong {
        /// The name (lossily decoded).
        name: String,
        /// Its length in bytes.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A tensor with zero dimensions or more than the limit.
    #[error("tensor {tensor:?} has {n_dims} dimensions, allowed 1..={limit}")]
    BadDimCount {
        /// The tensor.
        tensor: String,
        /// Dimensions declared.
        n_dims: u64,
        /// The limit.
        limit: u64,
    },
    /// The element count or byte size of a tensor overflows.
    #[error("tensor {tensor:?}: shape {dims:?} overflows the element or byte count")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its dimensions as stored in the file.
        dims: Vec<u64>,
    },
    /// A ggml type id that is unknown or removed.
    #[error("tensor {tensor:?}: unknown ggml type {type_id} at offset {offset}")]
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// Where the type field is.
        offset: u64,
        /// The id found.
        type_id: u32,
    },
    /// The innermost dimension is not a whole number of blocks.
    #[error("tensor {tensor:?}: row of {row} elements is not a multiple of {ggml_type}'s block size {block_size}")]
    RowNotBlockMultiple {
        /// The tensor.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Elements per row (`dims[0]`).
        row: u64,
        /// The type's block size.
        block_size: u64,
    },
    /// A tensor's data offset is not a multiple of the alignment.
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensor {tensor:?} at data offset {offset} overlaps tensor {other:?}, which ends at {other_end}")]
    TensorOverlap {
        /// The tensor that starts inside the other.
        tensor: String,
        /// Its start, relative to the data section.
        offset: u64,
        /// The tensor it overlaps.
        other: String,
        /// Where that one ends, relative to the data section.
        other_end: u64,
    },
    /// A tensor's data extends past the end of the file or data section.
    #[error("tensor {tensor:?}: data [{offset}, +{n_bytes}) runs past the end of the data section ({available} bytes)")]
    TensorPastEnd {
        /// The tensor.
        tensor: String,
        /// Its start, relative to the data section.
        offset: u64,
        /// Its size in bytes.
        n_bytes: u64,
        /// Size of the data section.
        available: u64,
    },
    /// An offset or size computation overflowed.
    #[error("size overflow computing {what}")]
    SizeOverflow {
        /// What was being computed.
        what: String,
    },

    // ---- writer ----
    /// The output exists and overwriting was not requested.
    #[error("output file exists (pass overwrite to replace it)")]
    OutputExists,
    /// More bytes were written for a tensor than its shape and type call for (or after the last one).
    #[error("tensor {tensor:?}: {given} more bytes given, only {remaining} of {declared} remain")]
    TooManyBytes {
        /// The tensor being written (empty if all tensors were complete).
        tensor: String,
        /// Its size in bytes.
        declared: u64,
        /// Bytes still expected for it.
        remaining: u64,
        /// Bytes in the rejected chunk.
        given: u64,
    },
    /// `finish` was called before every tensor was complete.
    #[error("tensor {tensor:?}: only {written} of {declared} bytes written")]
    TensorIncomplete {
        /// The first incomplete tensor.
        tensor: String,
        /// Its size in bytes.
        declared: u64,
        /// Bytes written.
        written: u64,
    },
    /// The written file's size differs from the planned size (a bug; reported, never ignored).
    #[error("wrote {written} bytes, planned {planned}")]
    SizeMismatch {
        /// Bytes written.
        written: u64,
        /// Planned size.
        planned: u64,
    },

    // ---- safetensors ----
    /// The file is shorter than the 8-byte header length.
    #[error("file of {file_len} bytes is too small for a safetensors header")]
    HeaderTooSmall {
        /// The file's length.
        file_len: u64,
    },
    /// The JSON header is not valid JSON or not of the expected shape.
    #[error("bad JSON header: {reason}")]
    BadHeader {
        /// What was wrong.
        reason: String,
    },
    /// A JSON object in the header (a tensor entry or `__metadata__`) names the same field twice.
    /// JSON parsers disagree on which copy wins, so the header has no single meaning.
    #[error("header entry {entry:?} has field {field:?} more than once")]
    DuplicateField {
        /// The tensor name, or `__metadata__`.
        entry: String,
        /// The repeated field.
        field: String,
    },
    /// A `__metadata__` value is not a string.
    #[error("__metadata__ value for {key:?} is not a string")]
    MetadataNotString {
        /// The key.
        key: String,
    },
    /// A dtype we do not know.
    #[error("tensor {tensor:?}: unknown dtype {dtype:?}")]
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The dtype string.
        dtype: String,
    },
    /// A tensor's byte range disagrees with its shape and dtype.
    #[error("tensor {tensor:?}: data_offsets [{start}, {end}) hold {} bytes, shape and dtype need {expected}", end.saturating_sub(*start))]
    TensorSizeMismatch {
        /// The tensor.
        tensor: String,
        /// Declared start, relative to the data section.
        start: u64,
        /// Declared end, relative to the data section.
        end: u64,
        /// Bytes its shape and dtype need.
        expected: u64,
    },
    /// Bytes of the data section that no tensor covers, between tensors.
    #[error("gap in data section: bytes [{gap_start}, {gap_end}) belong to no tensor (next is {tensor:?})")]
    DataGap {
        /// The tensor after the gap.
        tensor: String,
        /// Start of the gap, relative to the data section.
        gap_start: u64,
        /// End of the gap.
        gap_end: u64,
    },
    /// Bytes after the last tensor.
    #[error("{trailing} trailing bytes after the last tensor (data section {data_len} bytes)")]
    TrailingBytes {
        /// Uncovered bytes at the end.
        trailing: u64,
        /// Data section length.
        data_len: u64,
    },
    /// The same tensor in two shards.
    #[error("tensor {tensor:?} appears in shard {first:?} and in shard {second:?}")]
    DuplicateAcrossShards {
        /// The tensor.
        tensor: String,
        /// First shard.
        first: String,
        /// Second shard.
        second: String,
    },
    /// A later file of a GGUF split set was given where the set's first file is needed.
    #[error("this is split file {} of {count}; give the first file of the set (PREFIX-00001-of-{count:05}.gguf)", no + 1)]
    SplitNotFirst {
        /// Its `split.no` (0-based).
        no: u64,
        /// Its `split.count`.
        count: u64,
    },
    /// The first file of a split set lacks a split key.
    #[error("split set without {key}")]
    SplitKeyMissing {
        /// The key.
        key: &'static str,
    },
    /// A split file's name does not follow `PREFIX-NNNNN-of-MMMMM.gguf` for its split keys.
    #[error("split file {} of {count} must be named PREFIX-{:05}-of-{count:05}.gguf", no + 1, no + 1)]
    SplitBadName {
        /// Its `split.no` (0-based).
        no: u64,
        /// Its `split.count`.
        count: u64,
    },
    /// A part of a split set is not there (the path is the part's expected name).
    #[error("split part {} of {count} is missing", no + 1)]
    SplitPartMissing {
        /// The missing part's index (0-based).
        no: u64,
        /// Parts the first file declares.
        count: u64,
    },
    /// A file beside a split set continues its numbering past the declared count.
    #[error("extra split part: the set's first file declares {count} parts")]
    SplitPartExtra {
        /// Parts the first file declares.
        count: u64,
    },
    /// A part's split keys do not continue the set (a file of another set or model).
    #[error("split keys (no {no:?}, count {count:?}, tensors {tensors:?}) do not continue the set: expected no {expected_no}, count {expected_count}, tensors {expected_tensors}")]
    SplitKeysMismatch {
        /// Its `split.no` (u16 in files; absent or out of range: None).
        no: Option<u32>,
        /// Its `split.count`.
        count: Option<u32>,
        /// Its `split.tensors.count`.
        tensors: Option<i64>,
        /// The `split.no` its name and position call for.
        expected_no: u32,
        /// The first file's `split.count`.
        expected_count: u32,
        /// The first file's `split.tensors.count`.
        expected_tensors: i64,
    },
    /// The parts together hold another number of tensors than the set declares.
    #[error("the split files hold {found} tensors; split.tensors.count says {declared}")]
    SplitTensorCount {
        /// `split.tensors.count`.
        declared: i64,
        /// Tensors in all parts.
        found: u64,
    },
    /// The same tensor in two files of a split set.
    #[error("tensor {tensor:?} is also in split file {}", first.display())]
    DuplicateAcrossSplits {
        /// The tensor.
        tensor: String,
        /// The earlier file holding it.
        first: PathBuf,
    },
    /// The index names a shard file that does not exist.
    #[error("index names shard {shard:?}, which does not exist")]
    MissingShard {
        /// The shard file name.
        shard: String,
    },
    /// The index names a shard with a path that could leave the model folder.
    #[error(
        "index names shard {shard:?}: shard names must be plain file names in the model folder"
    )]
    UnsafeShardPath {
        /// The shard name as written in the index.
        shard: String,
    },
    /// The index maps a tensor to a shard that does not contain it.
    #[error("index maps tensor {tensor:?} to shard {shard:?}, which does not contain it")]
    IndexTensorNotInShard {
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },
    /// A shard contains a tensor that the index does not map to it.
    #[error("shard {shard:?} contains tensor {tensor:?}, which the index does not map to it")]
    ShardTensorNotInIndex {
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },
    /// The folder holds only pickle checkpoints, which can execute code when loaded.
    #[error("refusing pickle checkpoint(s) {files:?}: they can run arbitrary code when loaded; convert them to safetensors first")]
    PickleRefused {
        /// The pickle files found.
        files: Vec<String>,
    },
    /// No safetensors model in the folder.
    #[error("no model.safetensors.index.json or *.safetensors file found")]
    NoModelFound,
    /// The `safetensors` crate rejected a header our own checks accepted.
    #[error("safetensors validation failed: {reason}")]
    SafetensorsRejected {
        /// The crate's error, as text.
        reason: String,
    },
}
