//! Where in a sweep spread over GPUs and hosts a record was measured: the sweep's fingerprint
//! and size, the point the record belongs to, the shard of the sweep (`--shard K/N`), the GPU
//! it ran on (`--gpus`) and its replica (`--replicate`).
//!
//! It lives in the record's environment (`env.placement`, optional: older records and
//! endpoint records have none) so that `ctxcost merge` can check shards against each other
//! without the sweep file: shards of one sweep share the fingerprint, the point and case
//! counts, the shard count and the replica count; the records present and these counts say
//! which cases are missing or doubled.

use serde::{Deserialize, Serialize};

/// One shard of a sweep: the points whose index `i` has `i % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based, below `count`.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether point `i` (in the sweep's stable point order) belongs to this shard. Points
    /// are dealt round robin, so each shard gets small and large contexts alike.
    pub fn owns(&self, point: usize) -> bool {
        point % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The GPU a record's point ran on: the index given to `--gpus` (the measuring process's
/// `CUDA_VISIBLE_DEVICES`, in PCI bus order as nvidia-smi numbers them) and its UUID where
/// nvidia-smi could read it (absent for device lists on a machine without GPUs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GpuSlot {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl std::fmt::Display for GpuSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.uuid {
            Some(u) => write!(f, "gpu{} ({})", self.index, u),
            None => write!(f, "gpu{}", self.index),
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(x: &u32) -> bool {
    *x == 1
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

/// Where a record was measured within its sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Fingerprint of the resolved sweep ([`fingerprint`] of its definition: cases, sampling,
    /// verification, external engines). Shards of one sweep share it.
    pub sweep: String,
    /// Points of the whole sweep (every shard).
    pub points: usize,
    /// Cases of the whole sweep, one replica.
    pub cases: usize,
    /// Index of this record's point in the sweep's point order.
    pub point: usize,
    /// Cases of this record's point.
    pub point_cases: usize,
    /// How many GPUs measure each point (`--replicate`; 1 when absent).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replicas: u32,
    /// Which of them this record is (0-based; 0 when absent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replica: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSlot>,
}

/// A stable fingerprint of some bytes: 64-bit FNV-1a, as 16 hex digits. Stable across
/// builds, machines and versions (unlike `std`'s hasher), which is what a fingerprint shared
/// by shards measured on different hosts needs.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_published_vectors() {
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn shards_deal_every_point_to_exactly_one_shard() {
        for count in 1..6 {
            for point in 0..40 {
                let owners = (0..count).filter(|&index| Shard { index, count }.owns(point)).count();
                assert_eq!(owners, 1, "point {point} of {count} shards");
            }
        }
    }

    #[test]
    fn defaults_are_absent_and_read_back() {
        let p = Placement { sweep: "x".into(), points: 3, cases: 6, point: 1, point_cases: 2, replicas: 1, replica: 0, shard: None, gpu: None };
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("replica") && !text.contains("shard") && !text.contains("gpu"), "{text}");
        assert_eq!(serde_json::from_str::<Placement>(&text).unwrap(), p);
    }
}
