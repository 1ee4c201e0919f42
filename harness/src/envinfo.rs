//! Environment capture for records: tool version and git SHA, host, CPU, memory, and the
//! GPU (name, UUID, driver, clocks) where `nvidia-smi` can be read, and the GPUs it lists
//! (for `--gpus`). Also UTC timestamps.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ctxcost_core::record::{Environment, Tool};

/// The tool that writes the records.
pub fn tool() -> Tool {
    Tool { name: "ctxcost".into(), version: env!("CARGO_PKG_VERSION").into(), git_sha: env!("CTXCOST_GIT_SHA").into() }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Capture the machine.
pub fn capture() -> Environment {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let os_name = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l.trim_start_matches("PRETTY_NAME=").trim_matches('"').to_string()))
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    Environment {
        hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
        os: format!("{os_name} (kernel {kernel})"),
        cpu,
        cpu_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        host_memory_bytes: crate::memory::mem_total_bytes().unwrap_or(0),
        gpu: gpu_info(0),
        settings: std::env::vars().filter(|(k, _)| k.starts_with("CTXCOST_")).collect(),
        placement: None,
    }
}

/// A GPU as nvidia-smi lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedGpu {
    /// nvidia-smi's index (PCI bus order).
    pub index: u32,
    pub uuid: String,
    pub name: String,
}

/// Every GPU nvidia-smi lists (empty where there is no nvidia-smi or no GPU).
pub fn list_gpus() -> Vec<ListedGpu> {
    let Ok(o) = std::process::Command::new("nvidia-smi").args(["--query-gpu=index,uuid,name", "--format=csv,noheader"]).output() else {
        return Vec::new();
    };
    if !o.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(str::trim);
            let index = f.next()?.parse().ok()?;
            Some(ListedGpu { index, uuid: f.next()?.to_string(), name: f.next()?.to_string() })
        })
        .collect()
}

/// GPU facts of the GPU with nvidia-smi index `id` (empty where there is none).
pub fn gpu_info(id: u32) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let fields = ["name", "uuid", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit", "pstate"];
    let out = std::process::Command::new("nvidia-smi")
        .args([format!("--query-gpu={}", fields.join(",")), "--format=csv,noheader,nounits".into(), format!("--id={id}")])
        .output();
    if let Ok(o) = out {
        if o.status.success() {
            let line = String::from_utf8_lossy(&o.stdout);
            for (k, v) in fields.iter().zip(line.trim().split(", ")) {
                m.insert(k.replace('.', "_"), v.trim().to_string());
            }
        }
    }
    if let Ok(o) = std::process::Command::new("nvidia-smi").output() {
        let text = String::from_utf8_lossy(&o.stdout);
        if let Some(pos) = text.find("CUDA Version:") {
            let v: String = text[pos + 13..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            if !v.is_empty() {
                m.insert("cuda_version".into(), v);
            }
        }
    }
    m
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn now_parts() -> (i64, u32, u32, u64, u64, u64, u32) {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = t.as_secs();
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let sod = secs % 86_400;
    (y, mo, d, sod / 3600, sod % 3600 / 60, sod % 60, t.subsec_millis())
}

/// RFC 3339 UTC time with milliseconds.
pub fn utc_now() -> String {
    let (y, mo, d, h, mi, s, ms) = now_parts();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// Compact UTC time for file names: `20261128-203700`.
pub fn utc_compact() -> String {
    let (y, mo, d, h, mi, s, _) = now_parts();
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil(0), (1970, 1, 1));
        assert_eq!(super::civil(20_785), (2026, 11, 28));
    }
}
