//! `ctxcost engines`: every engine of the table, with its method, backend and whether it can
//! run here (the reason when not), and the kernel choices of our CUDA engines.

use ctxcost_engines::kernel_choice;
use ctxcost_engines::registry::available_engines;

/// `ctxcost engines`.
pub fn run() {
    println!("{:<18} {:<6} {:<9} {:<11} description", "engine", "method", "backend", "status");
    for e in available_engines() {
        let status = if e.available.is_ok() { "available" } else { "unavailable" };
        println!("{:<18} {:<6} {:<9} {:<11} {}", e.id, e.method, e.backend, status, e.description);
        if let Err(why) = &e.available {
            println!("{:<18} {:<6} {:<9} {:<11} reason: {}", "", "", "", "", why);
        }
    }
    #[cfg(feature = "http")]
    println!("{:<18} {:<6} {:<9} {:<11} remote OpenAI-compatible servers (vLLM, SGLang, hosted APIs), one engine per side: `ctxcost endpoint`", "http-<label>", "-", "http", "available");
    println!("\nExternal engines (backend `external`) run as worker processes (peers/PROTOCOL.md); each says in its first");
    println!("records whether its library is installed. Plug in your own with `ctxcost run --external ID:METHOD=COMMAND`.");
    println!("\nKernel choices of our CUDA engines (`ctxcost run --variant AXIS=V1,V2` measures each value as a case of its own;");
    println!("the first value is the default where the device runs it):");
    for axis in kernel_choice::KERNEL_AXES {
        println!("  {:<11} {:<13} {:<42} {}", axis.engine, axis.name, axis.values.join(", "), axis.what);
    }
}
