//! The streaming, atomic GGUF writer.
//!
//! Plan, then write: [`GgufWriter::create`] validates the metadata and tensor specs, computes every
//! tensor offset and the exact final file size, and writes the header, tensor infos and padding to a
//! temporary file in the output's directory ([`crate::atomic::AtomicFile`]). Tensor bytes are then
//! streamed in any number of chunks per tensor, in spec order; the writer inserts the padding between
//! tensors. [`GgufWriter::finish`] checks that every tensor is complete and the size is as planned,
//! then commits the temporary (fsync, move to the final name, fsync the directory), so a reader
//! never sees a partial file under the final name. Dropping an unfinished writer removes the
//! temporary file; see [`crate::atomic`] for signals, `kill -9` and concurrent writers.
//!
//! Not done: a free-disk-space check before writing (it needs `statvfs`, i.e. `unsafe` libc calls
//! outside the mmap module); a full disk surfaces as an I/O error from a write naming the output,
//! and the temp file is removed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{
    align_up, tensor_size, Metadata, Value, ValueType, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC,
};
use crate::atomic::AtomicFile;
use crate::{Error, ErrorKind, GgmlType, Limits};

/// The GGUF version we write.
const VERSION: u32 = 3;
/// Buffer between our writes and the file: large, so streaming small chunks costs few syscalls.
const BUF_SIZE: usize = 8 << 20;
/// Zeros for padding (alignment is at most this large in practice; longer pads loop).
const ZEROS: [u8; 4096] = [0; 4096];

/// A tensor to be written: its name, ggml-order dimensions (innermost first) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name (1..=63 bytes).
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ggml_type: GgmlType) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dims,
            ggml_type,
        }
    }
}

/// Options for [`GgufWriter::create`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replace an existing output file. Without it, an existing file is an error.
    pub overwrite: bool,
}

#[derive(Debug)]
struct Planned {
    spec: TensorSpec,
    n_bytes: u64,
}

/// Writes one GGUF file; see the module documentation.
#[derive(Debug)]
pub struct GgufWriter {
    path: PathBuf,
    atomic: Option<AtomicFile>,
    out: Option<BufWriter<File>>,
    opts: WriteOptions,
    alignment: u64,
    tensors: Vec<Planned>,
    planned_size: u64,
    /// Index of the tensor being written (== tensors.len() when all are complete).
    current: usize,
    /// Bytes written of the current tensor.
    written_in_current: u64,
    /// Bytes written to the file so far.
    position: u64,
    finished: bool,
}

impl GgufWriter {
    /// Validates the plan, creates the temporary file and writes the header.
    pub fn create(
        path: &Path,
        metadata: &Metadata,
        tensors: Vec<TensorSpec>,
        opts: WriteOptions,
    ) -> Result<GgufWriter, Error> {
        let err = |kind| Error::new(path, kind);
        let limits = Limits::default();
        let alignment = alignment_of(metadata).map_err(err)?;

        // Tensor specs: the same rules the reader enforces.
        let mut names = HashSet::new();
        let mut planned = Vec::with_capacity(tensors.len());
        for (index, spec) in tensors.into_iter().enumerate() {
            if spec.name.is_empty() {
                return Err(err(ErrorKind::EmptyTensorName {
                    index: index as u64,
                }));
            }
            if spec.name.len() > limits.max_tensor_name_len {
                return Err(err(ErrorKind::TensorNameTooLong {
                    name: spec.name.clone(),
                    len: spec.name.len() as u64,
                    limit: limits.max_tensor_name_len as u64,
                }));
            }
            if !names.insert(spec.name.clone()) {
                return Err(err(ErrorKind::DuplicateTensorName { name: spec.name }));
            }
            let n_bytes = tensor_size(&spec.name, &spec.dims, spec.ggml_type, limits.max_n_dims)
                .map_err(err)?;
            planned.push(Planned { spec, n_bytes });
        }

        // Header, with every offset computed up front.
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(planned.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata.iter() {
            if key.is_empty() {
                return Err(err(ErrorKind::EmptyKey {
                    offset: header.len() as u64,
                }));
            }
            check_value(key, value, 0, &limits).map_err(err)?;
            put_str(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }
        let overflow = |what: &str| {
            err(ErrorKind::SizeOverflow {
                what: what.to_owned(),
            })
        };
        let mut offset: u64 = 0;
        for t in &planned {
            put_str(&mut header, &t.spec.name);
            header.extend_from_slice(&(t.spec.dims.len() as u32).to_le_bytes());
            for d in &t.spec.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.spec.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(t.n_bytes, alignment)
                .and_then(|p| offset.checked_add(p))
                .ok_or_else(|| overflow("tensor offsets"))?;
        }
        let data_offset =
            align_up(header.len() as u64, alignment).ok_or_else(|| overflow("data offset"))?;
        let planned_size = data_offset
            .checked_add(offset)
            .ok_or_else(|| overflow("file size"))?;

        if !opts.overwrite && path.exists() {
            return Err(err(ErrorKind::OutputExists));
        }
        let atomic = AtomicFile::create(path, opts.overwrite)?;
        let file = atomic.try_clone_file()?;
        let mut w = GgufWriter {
            path: path.to_path_buf(),
            atomic: Some(atomic),
            out: Some(BufWriter::with_capacity(BUF_SIZE, file)),
            opts,
            alignment,
            tensors: planned,
            planned_size,
            current: 0,
            written_in_current: 0,
            position: 0,
            finished: false,
        };
        w.raw_write(&header)?;
        w.pad_to(data_offset)?;
        w.skip_empty_tensors()?;
        Ok(w)
    }

    /// The exact size the finished file will have.
    pub fn planned_size(&self) -> u64 {
        self.planned_size
    }

    /// The alignment in use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The tensor whose bytes are expected next, or `None` when all are complete.
    pub fn current_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.current).map(|t| &t.spec)
    }

    /// Appends `chunk` to the current tensor. A tensor's bytes may come in several chunks; a chunk
    /// never spans two tensors. When a tensor is complete the writer pads and moves to the next.
    /// A chunk longer than what the current tensor still needs is refused and nothing is written.
    pub fn write_tensor_data(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        let (name, declared) = match self.tensors.get(self.current) {
            Some(t) => (t.spec.name.clone(), t.n_bytes),
            None => (String::new(), 0),
        };
        let remaining = declared - self.written_in_current;
        if chunk.len() as u64 > remaining {
            return Err(Error::new(
                &self.path,
                ErrorKind::TooManyBytes {
                    tensor: name,
                    declared,
                    remaining,
                    given: chunk.len() as u64,
                },
            ));
        }
        self.raw_write(chunk)?;
        self.written_in_current += chunk.len() as u64;
        if self.written_in_current == declared {
            let end = align_up(self.position, self.alignment).unwrap_or(self.position);
            self.pad_to(end)?;
            self.current += 1;
            self.written_in_current = 0;
            self.skip_empty_tensors()?;
        }
        Ok(())
    }

    /// Checks every tensor is complete, flushes and fsyncs, renames into place and fsyncs the
    /// directory. Returns the file size.
    pub fn finish(mut self) -> Result<u64, Error> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(Error::new(
                &self.path,
                ErrorKind::TensorIncomplete {
                    tensor: t.spec.name.clone(),
                    declared: t.n_bytes,
                    written: self.written_in_current,
                },
            ));
        }
        if self.position != self.planned_size {
            return Err(Error::new(
                &self.path,
                ErrorKind::SizeMismatch {
                    written: self.position,
                    planned: self.planned_size,
                },
            ));
        }
        let io = |op, source| ErrorKind::Io { op, source };
        if let Some(out) = self.out.take() {
            // Flush our handle; the commit syncs the file through the other one.
            drop(
                out.into_inner()
                    .map_err(|e| Error::new(&self.path, io("flush", e.into_error())))?,
            );
        }
        if let Some(atomic) = self.atomic.take() {
            atomic.commit(self.opts.overwrite)?;
        }
        self.finished = true;
        Ok(self.planned_size)
    }

    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.write_all(bytes).map_err(|source| {
            Error::new(
                &self.path,
                ErrorKind::Io {
                    op: "write",
                    source,
                },
            )
        })?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> Result<(), Error> {
        while self.position < target {
            let n = (target - self.position).min(ZEROS.len() as u64) as usize;
            self.raw_write(&ZEROS[..n])?;
        }
        Ok(())
    }

    fn skip_empty_tensors(&mut self) -> Result<(), Error> {
        while self
            .tensors
            .get(self.current)
            .is_some_and(|t| t.n_bytes == 0)
        {
            self.current += 1;
        }
        Ok(())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Our handle first (its buffer may still hold bytes), then the temporary.
            drop(self.out.take());
            drop(self.atomic.take());
        }
    }
}

/// Writes a whole GGUF file from in-memory tensors (for small files and tests).
pub fn write_gguf(
    path: &Path,
    metadata: &Metadata,
    tensors: &[(TensorSpec, &[u8])],
    opts: WriteOptions,
) -> Result<u64, Error> {
    let specs = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::create(path, metadata, specs, opts)?;
    for (_, data) in tensors {
        w.write_tensor_data(data)?;
    }
    w.finish()
}

fn alignment_of(metadata: &Metadata) -> Result<u64, ErrorKind> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT.into()),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok((*a).into()),
        Some(Value::U32(a)) => Err(ErrorKind::BadAlignment {
            alignment: (*a).into(),
        }),
        Some(other) => Err(ErrorKind::WrongValueType {
            key: ALIGNMENT_KEY.into(),
            expected: ValueType::U32,
            found: other.value_type(),
        }),
    }
}

/// Arrays must be homogeneous and within the reader's limits, so that what we write reads back.
fn check_value(key: &str, value: &Value, depth: u32, limits: &Limits) -> Result<(), ErrorKind> {
    match value {
        Value::String(s) if s.len() as u64 > limits.max_string_len => {
            Err(ErrorKind::LimitExceeded {
                what: format!("string value of {key:?}"),
                offset: 0,
                declared: s.len() as u64,
                limit: limits.max_string_len,
            })
        }
        Value::Array(a) => {
            let depth = depth + 1;
            if depth > limits.max_array_depth {
                return Err(ErrorKind::ArrayTooDeep {
                    key: key.to_owned(),
                    offset: 0,
                    depth,
                    limit: limits.max_array_depth,
                });
            }
            if a.values.len() as u64 > limits.max_array_len {
                return Err(ErrorKind::LimitExceeded {
                    what: format!("array length of {key:?}"),
                    offset: 0,
                    declared: a.values.len() as u64,
                    limit: limits.max_array_len,
                });
            }
            for v in &a.values {
                if v.value_type() != a.elem_type {
                    return Err(ErrorKind::ArrayTypeMismatch {
                        key: key.to_owned(),
                        expected: a.elem_type,
                        found: v.value_type(),
                    });
                }
                check_value(key, v, depth, limits)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_str(buf, s),
        Value::Array(a) => {
            buf.extend_from_slice(&a.elem_type.id().to_le_bytes());
            buf.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for e in &a.values {
                put_value(buf, e);
            }
        }
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}
