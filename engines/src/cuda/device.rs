//! The CUDA runtime layer: one context and stream per process, the device's properties,
//! NVRTC compilation cached by (kernel, options), CUDA-event timing, the L2 flush between
//! samples, device-memory figures and the mapping of driver errors onto [`EngineError`].
//!
//! Nothing here touches cudarc before [`super::probe`] has confirmed that `libcuda` and
//! `libnvrtc` can be loaded: cudarc panics when a library is missing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUresult};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use cudarc::nvrtc::{CompileError, CompileOptions};
use ctxcost_kernels::KernelId;

use crate::{DeviceMemory, EngineError};

/// A plain error message, boxed into [`EngineError::Backend`].
#[derive(Debug)]
pub struct CudaError(pub String);

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaError {}

/// Map a driver error: out-of-memory becomes [`EngineError::OutOfMemory`] (a skipped case),
/// anything else a backend error with its context.
pub fn driver_err(context: &str, e: DriverError) -> EngineError {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        EngineError::OutOfMemory(format!("{context}: the device is out of memory"))
    } else {
        EngineError::backend(context.to_string(), e)
    }
}

/// Whether the L2 flush between samples is on (`CTXCOST_L2_FLUSH=0` turns it off).
pub fn l2_flush_enabled() -> bool {
    !matches!(std::env::var("CTXCOST_L2_FLUSH").as_deref(), Ok("0") | Ok("false") | Ok("off"))
}

/// The process's CUDA device: context, stream, properties, compiled modules.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    pub sm_count: u32,
    pub l2_bytes: usize,
    /// Largest dynamic shared memory a block may opt in to.
    pub max_smem_optin: usize,
    /// NVRTC `--gpu-architecture` for this device, e.g. `sm_90`.
    pub arch: &'static str,
    modules: Mutex<HashMap<(KernelId, String), Arc<CudaModule>>>,
    flush: Mutex<Option<CudaSlice<u8>>>,
}

static DEVICE: OnceLock<Result<Arc<Device>, String>> = OnceLock::new();

/// The device of this process, opened on first use (after the library probe).
pub fn device() -> Result<Arc<Device>, String> {
    DEVICE
        .get_or_init(|| {
            super::probe_libraries()?;
            Device::open().map(Arc::new)
        })
        .clone()
}

impl Device {
    fn open() -> Result<Self, String> {
        let n = CudaContext::device_count().map_err(|e| format!("CUDA driver loaded but cuInit/cuDeviceGetCount failed: {e}"))?;
        if n < 1 {
            return Err("CUDA driver loaded but no CUDA device is visible".into());
        }
        let ctx = CudaContext::new(0).map_err(|e| format!("cannot create a CUDA context on device 0: {e}"))?;
        // One stream, ordered: cudarc's per-buffer event tracking is not needed.
        // SAFETY: every buffer of this crate is used on the single stream below only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let attr = |a: CUdevice_attribute| ctx.attribute(a).map_err(|e| format!("cuDeviceGetAttribute({a:?}): {e}"));
        let cc = ctx.compute_capability().map_err(|e| format!("compute capability: {e}"))?;
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let l2_bytes = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize;
        let max_smem_optin = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as usize;
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        let arch: &'static str = Box::leak(format!("sm_{}{}", cc.0, cc.1).into_boxed_str());
        Ok(Self {
            ctx,
            stream,
            name,
            cc,
            sm_count,
            l2_bytes,
            max_smem_optin,
            arch,
            modules: Mutex::new(HashMap::new()),
            flush: Mutex::new(None),
        })
    }

    /// Copy host values into a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T], what: &str) -> Result<CudaSlice<T>, EngineError> {
        self.stream.clone_htod(host).map_err(|e| driver_err(&format!("uploading {what}"), e))
    }

    /// Free and total device memory (bytes).
    pub fn mem_info(&self) -> Result<(u64, u64), EngineError> {
        let (free, total) = self.ctx.mem_get_info().map_err(|e| driver_err("cuMemGetInfo", e))?;
        Ok((free as u64, total as u64))
    }

    /// Free device memory before a case allocates `need` bytes, or `OutOfMemory` when `need`
    /// does not fit beside the L2 flush buffer and `headroom` bytes for the driver. The
    /// message reads `{what} needs X GiB of device memory, Y GiB free{hint}`.
    pub fn room_for(&self, need: u64, headroom: u64, what: &str, hint: &str) -> Result<u64, EngineError> {
        let (free_before, _) = self.mem_info()?;
        if need + 2 * self.l2_bytes as u64 + headroom > free_before {
            return Err(EngineError::OutOfMemory(format!(
                "{what} needs {:.2} GiB of device memory, {:.2} GiB free{hint}",
                need as f64 / (1u64 << 30) as f64,
                free_before as f64 / (1u64 << 30) as f64
            )));
        }
        Ok(free_before)
    }

    /// Wait for a case's inputs to be written (`context` names that work in an error), then
    /// its memory figures: `need` bytes held, free memory before ([`Device::room_for`]) and now.
    pub fn prepared_memory(&self, context: &str, need: u64, free_before: u64) -> Result<DeviceMemory, EngineError> {
        self.sync(context)?;
        let (free_after, _) = self.mem_info()?;
        Ok(DeviceMemory { peak_allocated: need, free_before: Some(free_before), free_after: Some(free_after) })
    }

    /// A kernel entry point, compiling its source with NVRTC on first use (cached by
    /// kernel and options; the NVRTC log is part of the error).
    pub fn function(&self, kernel: KernelId, entry: &str, extra_options: &[&str]) -> Result<CudaFunction, EngineError> {
        let key = (kernel, extra_options.join(" "));
        let module = {
            let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile(kernel, self.arch, extra_options)?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(|e| driver_err(&format!("loading the module of {}", kernel.file_name()), e))?;
                    cache.insert(key, m.clone());
                    m
                }
            }
        };
        module.load_function(entry).map_err(|e| driver_err(&format!("kernel `{entry}` in {}", kernel.file_name()), e))
    }

    /// A timing-capable event (events made without flags cannot time).
    pub fn timing_event(&self) -> Result<CudaEvent, EngineError> {
        self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_err("cuEventCreate", e))
    }

    /// Evict the L2 cache by writing a buffer twice its size (untimed; call before the start
    /// event). A no-op when `CTXCOST_L2_FLUSH=0`.
    pub fn flush_l2(&self) -> Result<(), EngineError> {
        if !l2_flush_enabled() {
            return Ok(());
        }
        let mut guard = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let bytes = (2 * self.l2_bytes).max(64 << 20);
            *guard = Some(self.stream.alloc_zeros::<u8>(bytes).map_err(|e| driver_err("allocating the L2 flush buffer", e))?);
        }
        let buf = guard.as_mut().expect("flush buffer allocated above");
        self.stream.memset_zeros(buf).map_err(|e| driver_err("L2 flush", e))
    }

    /// Block until the stream is idle, surfacing asynchronous kernel errors.
    pub fn sync(&self, context: &str) -> Result<(), EngineError> {
        self.stream.synchronize().map_err(|e| driver_err(context, e))
    }
}

/// Compile one kernel source for `arch` (NVRTC), with the log in the error.
pub fn compile(kernel: KernelId, arch: &'static str, extra_options: &[&str]) -> Result<cudarc::nvrtc::Ptx, EngineError> {
    let mut options = vec!["--std=c++17".to_string(), "-lineinfo".to_string()];
    options.extend(extra_options.iter().map(|s| s.to_string()));
    let opts = CompileOptions { arch: Some(arch), options, name: Some(kernel.file_name().into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(kernel.source(), opts).map_err(|e| {
        let detail = match &e {
            CompileError::CompileError { nvrtc, options, log } => {
                format!("{nvrtc:?} with options {options:?}:\n{}", log.to_string_lossy())
            }
            other => format!("{other:?}"),
        };
        EngineError::backend(format!("NVRTC compile of {} for {arch}", kernel.file_name()), CudaError(detail))
    })
}

/// Start/stop events around a timed region.
pub struct EventTimer {
    start: CudaEvent,
    marks: Vec<CudaEvent>,
}

impl EventTimer {
    /// `marks` events can be recorded after the start (the last one is the stop).
    pub fn new(dev: &Device, marks: usize) -> Result<Self, EngineError> {
        let start = dev.timing_event()?;
        let marks = (0..marks.max(1)).map(|_| dev.timing_event()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { start, marks })
    }

    pub fn start(&self, dev: &Device) -> Result<(), EngineError> {
        self.start.record(&dev.stream).map_err(|e| driver_err("cuEventRecord", e))
    }

    pub fn mark(&self, dev: &Device, i: usize) -> Result<(), EngineError> {
        self.marks[i].record(&dev.stream).map_err(|e| driver_err("cuEventRecord", e))
    }

    /// Milliseconds from the start to every mark (each must have been recorded).
    pub fn elapsed(&self) -> Result<Vec<f64>, EngineError> {
        self.elapsed_first(self.marks.len())
    }

    /// Milliseconds from the start to each of the first `n` marks (waits for them).
    pub fn elapsed_first(&self, n: usize) -> Result<Vec<f64>, EngineError> {
        self.marks[..n.min(self.marks.len())]
            .iter()
            .map(|m| self.start.elapsed_ms(m).map(f64::from).map_err(|e| driver_err("cuEventElapsedTime (a kernel may have failed)", e)))
            .collect()
    }
}
