//! ctxcost-kernels: the CUDA C sources of the GPU engines, embedded as text.
//!
//! Kernels are data: each `.cu` file is compiled by NVRTC at run time for the device's own
//! architecture, and cached by the engine by (kernel, options). [`KernelId`] names each
//! source and the entry points it defines.

/// A CUDA source file and its entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelId {}

impl KernelId {
    /// Every kernel source, in a stable order.
    pub const ALL: &'static [KernelId] = &[];
}
