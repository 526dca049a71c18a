//! The GPU itself: loading the CUDA libraries, one context and stream, the kernels compiled by
//! NVRTC for the device present, raw device buffers, and the cuBLAS products.
//!
//! Everything runs on one stream, in order; the host waits only where it reads results back.
//! Device memory is managed here as plain allocations ([`DevMem`]) addressed by raw pointers, so
//! sub-ranges (a layer's cache, a tile's rows) are pointer offsets.
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, CudaContext, CudaFunction, CudaStream, LaunchConfig};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::collections::HashMap;
use std::sync::Arc;

/// Why the GPU could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A CUDA library could not be loaded.
    #[error(
        "the CUDA library `{lib}` was not found (tried {tried}); --device cuda needs an NVIDIA \
         driver and the CUDA {what} library (set LD_LIBRARY_PATH to the folder holding it)"
    )]
    MissingLibrary {
        /// Library name (`cuda`, `nvrtc`, `cublas`).
        lib: &'static str,
        /// What it is.
        what: &'static str,
        /// The file names tried.
        tried: String,
    },
    /// No such device.
    #[error("no CUDA device {ordinal} (this machine has {count})")]
    NoDevice {
        /// Requested ordinal.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// The device is older than compute capability 8.0.
    #[error("CUDA device {ordinal} ({name}) has compute capability {major}.{minor}; 8.0 or later is needed")]
    TooOld {
        /// Ordinal.
        ordinal: usize,
        /// Device name.
        name: String,
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The kernels did not compile.
    #[error("compiling the CUDA kernels with NVRTC: {0}")]
    Compile(String),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// Not enough device memory.
    #[error(
        "out of GPU memory: {what} needs {need_mib} MiB, {free_mib} MiB free of {total_mib} MiB"
    )]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// MiB requested.
        need_mib: usize,
        /// MiB free.
        free_mib: usize,
        /// MiB in all.
        total_mib: usize,
    },
}

const KERNELS: &str = include_str!("kernels.cu");

/// Every kernel in `kernels.cu`.
const KERNEL_NAMES: &[&str] = &[
    "dq_f32",
    "dq_f16",
    "dq_bf16",
    "dq_q4_0",
    "dq_q4_1",
    "dq_q5_0",
    "dq_q5_1",
    "dq_q8_0",
    "dq_q2_k",
    "dq_q3_k",
    "dq_q4_k",
    "dq_q5_k",
    "dq_q6_k",
    "dq_iq4_nl",
    "dq_iq4_xs",
    "to_f16",
    "add_in_place",
    "rms_norm_f16",
    "rope_store",
    "softmax_causal",
    "swiglu_f16",
    "nll_rows",
    "kld_rows",
    "kld_saved_rows",
    "col_sumsq",
    "flash_attn_64",
    "flash_attn_128",
];

/// Checks that the three CUDA libraries can be loaded, before cudarc (which panics when one is
/// missing) touches them.
pub fn probe_libraries() -> Result<(), CudaError> {
    for (lib, what) in [
        ("cuda", "driver"),
        ("nvrtc", "run-time compiler (NVRTC)"),
        ("cublas", "BLAS (cuBLAS)"),
    ] {
        let mut names = cudarc::get_lib_name_candidates(lib);
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        // SAFETY: loading a CUDA library runs its initializers, which is what using it needs.
        let found = names
            .iter()
            .any(|n| unsafe { libloading::Library::new(n) }.is_ok());
        if !found {
            return Err(CudaError::MissingLibrary {
                lib,
                what,
                tried: names.join(", "),
            });
        }
    }
    Ok(())
}

/// How many CUDA devices there are (after [`probe_libraries`]).
pub fn device_count() -> Result<usize, CudaError> {
    probe_libraries()?;
    Ok(CudaContext::device_count()? as usize)
}

/// One device allocation, freed on drop.
pub struct DevMem {
    /// Device address.
    pub ptr: u64,
    /// Size in bytes.
    pub bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DevMem {
    /// The address of byte `off`.
    pub fn at(&self, off: usize) -> u64 {
        debug_assert!(off <= self.bytes);
        self.ptr + off as u64
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        if self.ptr != 0 {
            let _ = self.ctx.bind_to_thread();
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once; the stream
            // is synchronized before any buffer is dropped (Gpu::sync at the end of each use).
            unsafe {
                let _ = drv::free_sync(self.ptr);
            }
        }
    }
}

// SAFETY: a device address is plain data; all use goes through the owning Gpu's stream.
unsafe impl Send for DevMem {}
unsafe impl Sync for DevMem {}

/// Element types of a matrix product operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl Dt {
    fn cuda(self) -> blas_sys::cudaDataType {
        match self {
            Dt::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            Dt::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// One operand of a (strided, batched) row-major product: address, row stride (elements) and
/// batch stride (elements).
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    /// Device address of the first element.
    pub ptr: u64,
    /// Elements between rows.
    pub ld: usize,
    /// Elements between consecutive matrices of a batch.
    pub stride: usize,
    /// Element type.
    pub dt: Dt,
}

/// A context, its stream, the compiled kernels and a cuBLAS handle.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<&'static str, CudaFunction>,
    /// `cuda:N (device name)`.
    pub name: String,
    /// Multiprocessors.
    pub sms: u32,
}

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        probe_libraries()?;
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream per model, in order: buffers need no per-use events.
        // SAFETY: every buffer here is used on this one stream only.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let dev_name = ctx.name()?;
        if major < 8 {
            return Err(CudaError::TooOld {
                ordinal,
                name: dev_name,
                major,
                minor,
            });
        }
        let arch: &'static str = match (major, minor) {
            (8, 0) => "compute_80",
            (8, 6) => "compute_86",
            (8, 7) => "compute_87",
            (8, 9) => "compute_89",
            (9, 0) => "compute_90",
            (10, 0) => "compute_100",
            (12, 0) => "compute_120",
            // PTX for the oldest supported architecture runs on every later one (JIT).
            _ => "compute_80",
        };
        let ptx = compile_ptx_with_opts(
            KERNELS,
            CompileOptions {
                arch: Some(arch),
                fmad: Some(false),
                ..Default::default()
            },
        )
        .map_err(|e| CudaError::Compile(e.to_string()))?;
        let module = ctx.load_module(ptx)?;
        let mut funcs = HashMap::new();
        for &k in KERNEL_NAMES {
            funcs.insert(k, module.load_function(k)?);
        }
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let sms = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )? as u32;
        Ok(Self {
            ctx,
            stream,
            blas,
            funcs,
            name: format!("cuda:{ordinal} ({dev_name})"),
            sms,
        })
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Allocates `bytes` (uninitialized).
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DevMem, CudaError> {
        self.ctx.bind_to_thread()?;
        let bytes = bytes.max(1);
        // SAFETY: a plain allocation in the bound context.
        match unsafe { drv::malloc_sync(bytes) } {
            Ok(ptr) => Ok(DevMem {
                ptr,
                bytes,
                ctx: self.ctx.clone(),
            }),
            Err(e) => {
                let (free, total) = self.mem_info().unwrap_or((0, 0));
                if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    Err(CudaError::OutOfMemory {
                        what: what.to_string(),
                        need_mib: bytes >> 20,
                        free_mib: free >> 20,
                        total_mib: total >> 20,
                    })
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Copies `src` to device address `dst` (which must have room) and waits.
    pub fn upload<T>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the caller's buffer at `dst` holds at least size_of_val(src) bytes; the
        // stream is synchronized before `src` can go away.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream())? };
        self.sync()
    }

    /// A new buffer holding `src`.
    pub fn upload_new<T>(&self, src: &[T], what: &str) -> Result<DevMem, CudaError> {
        let m = self.alloc(std::mem::size_of_val(src), what)?;
        self.upload(m.ptr, src)?;
        Ok(m)
    }

    /// Copies from device address `src` into `dst` and waits.
    pub fn download<T>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the device range holds size_of_val(dst) bytes (caller); synchronized below.
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream())? };
        self.sync()
    }

    /// Sets `bytes` bytes at `dst` to zero (asynchronously).
    pub fn zero(&self, dst: u64, bytes: usize) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the range is inside one allocation (caller).
        unsafe { drv::memset_d8_async(dst, 0, bytes, self.stream.cu_stream())? };
        Ok(())
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }

    /// Launches kernel `name` on `grid` blocks of `block` threads with the arguments pushed by
    /// `args`.
    pub fn launch(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        args: &[&dyn Arg],
    ) -> Result<(), CudaError> {
        self.launch_grid(name, (grid, 1), block, args)
    }

    /// Launches kernel `name` on a `grid.0 × grid.1` grid of `block`-thread blocks.
    pub fn launch_grid(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        args: &[&dyn Arg],
    ) -> Result<(), CudaError> {
        let f = &self.funcs[name];
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: every kernel's parameters are declared in kernels.cu in the order the callers
        // pass them, with the same sizes (u64 for pointers, i32/i64/f32 values).
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (grid.0.max(1), grid.1.max(1), 1),
                block_dim: (block, 1, 1),
                shared_mem_bytes: 0,
            })?
        };
        Ok(())
    }

    /// Copies `bytes` bytes from device address `src` to `dst` (asynchronously, in order).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: both ranges lie inside live allocations (caller) and do not overlap.
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream())? };
        Ok(())
    }

    /// `acc[c] += Σ_r x[r][c]²` over `rows` f16 rows of `cols` (f64 sums on the device).
    pub fn col_sumsq(&self, x: u64, rows: usize, cols: usize, acc: u64) -> Result<(), CudaError> {
        let f = &self.funcs["col_sumsq"];
        let (r, c) = (rows as i32, cols as i32);
        let mut b = self.stream.launch_builder(f);
        b.arg(&x).arg(&r).arg(&c).arg(&acc);
        let groups = rows.div_ceil(64).clamp(1, 64) as u32;
        // SAFETY: col_sumsq(const u16*, int, int, double*) as declared in kernels.cu.
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (cols.div_ceil(256) as u32, groups, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })?
        };
        Ok(())
    }

    /// Launches an elementwise kernel over `n` elements (256 threads per block).
    pub fn launch_n(&self, name: &str, n: usize, args: &[&dyn Arg]) -> Result<(), CudaError> {
        self.launch(name, n.div_ceil(256) as u32, 256, args)
    }

    /// Row-major batched product `C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b]` for
    /// `b < batch`, with `C` `m × n`, `op(A)` `m × k` and `op(B)` `k × n`. `A` is stored
    /// `m × k` (`a_t` false) or `k × m` (`a_t` true, `op(A)` its transpose); likewise `B` is
    /// stored `k × n` or, with `b_t`, `n × k`. Accumulation in f32 on tensor cores.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: Mat,
        a_t: bool,
        b: Mat,
        b_t: bool,
        beta: f32,
        c: Mat,
        batch: usize,
    ) -> Result<(), CudaError> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        self.ctx.bind_to_thread()?;
        // Row-major C (m × n) is column-major Cᵀ (n × m) = op(B)ᵀ · op(A)ᵀ: cuBLAS's first
        // operand is our B, its second our A. A row-major matrix stored r × c is the
        // column-major c × r matrix, i.e. already transposed.
        let op_first = if b_t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let op_second = if a_t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let (alpha, beta) = (alpha, beta);
        // SAFETY: the operands are device ranges sized by the callers for these shapes.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                op_first,
                op_second,
                n as i32,
                m as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                b.ptr as *const _,
                b.dt.cuda(),
                b.ld as i32,
                b.stride as i64,
                a.ptr as *const _,
                a.dt.cuda(),
                a.ld as i32,
                a.stride as i64,
                (&beta) as *const f32 as *const _,
                c.ptr as *mut _,
                c.dt.cuda(),
                c.ld as i32,
                c.stride as i64,
                batch as i32,
                compute,
                algo,
            )?;
        }
        Ok(())
    }
}

/// A kernel argument (device address or scalar).
pub trait Arg {
    /// Pushes self onto a launch.
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}
