//! Instance types: a built-in EC2-like table (t3, m5, c5, r5, i3 × nano…xlarge) that a
//! JSON config file can extend or override.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One instance type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceType {
    /// e.g. `t3.micro`.
    pub name: String,
    /// general, compute, memory or storage.
    pub family: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Instance-store disks.
    #[serde(default)]
    pub instance_store_disks: u32,
    /// Size of all instance-store disks together, GiB.
    #[serde(default)]
    pub instance_store_gib: u64,
    /// Network bandwidth ("up to", what DescribeInstanceTypes shows).
    #[serde(default)]
    pub network_mbps: u32,
    /// Baseline network bandwidth, the rate a guest keeps once its burst is spent (EC2's
    /// "baseline bandwidth"). 0: `network_mbps`.
    #[serde(default)]
    pub network_baseline_mbps: u32,
    /// EBS bandwidth.
    #[serde(default)]
    pub ebs_mbps: u32,
    /// Burstable (CPU credits).
    #[serde(default)]
    pub burstable: bool,
}

/// Token buckets of an instance's NIC (hearth-vmm's per-NIC `rate_limit`, each direction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicLimits {
    /// Frames per second.
    pub packets_per_sec: u64,
    /// Frame bucket size.
    pub packets_burst: u64,
    /// Bytes per second.
    pub bytes_per_sec: u64,
    /// Byte bucket size.
    pub bytes_burst: u64,
}

/// Frames per second allowed per Mbit/s of baseline bandwidth (about 1,250-byte frames at
/// the baseline; small frames hit this limit first).
pub const PACKETS_PER_MBPS: u64 = 100;
/// The fewest frames per second any NIC gets (so a 32 Mbit/s nano still does DNS and ARP at
/// full speed).
pub const MIN_PACKETS_PER_SEC: u64 = 10_000;

impl InstanceType {
    /// The NIC limits of this type: the baseline bandwidth as the refill rate, a bucket of one
    /// second at the "up to" bandwidth (`network_mbps`) as its burst; frames at
    /// [`PACKETS_PER_MBPS`] per Mbit/s of either (at least [`MIN_PACKETS_PER_SEC`]). A type
    /// with neither bandwidth set is unlimited (all zero).
    pub fn nic_limits(&self) -> NicLimits {
        let baseline = u64::from(if self.network_baseline_mbps > 0 {
            self.network_baseline_mbps
        } else {
            self.network_mbps
        });
        if baseline == 0 {
            return NicLimits::default();
        }
        let peak = baseline.max(u64::from(self.network_mbps));
        let packets_per_sec = (baseline * PACKETS_PER_MBPS).max(MIN_PACKETS_PER_SEC);
        NicLimits {
            packets_per_sec,
            packets_burst: (peak * PACKETS_PER_MBPS).max(packets_per_sec),
            bytes_per_sec: baseline * 1_000_000 / 8,
            bytes_burst: peak * 1_000_000 / 8,
        }
    }
}

/// Baseline bandwidth of the built-in sizes (nano … xlarge), Mbit/s. EC2's published
/// baselines: t3 doubles from 32 (nano) to 1,024 (xlarge), bursting up to 5 Gbit/s; m5, c5,
/// r5 and i3 have 750 (large) and 1,250 (xlarge), bursting up to 10 Gbit/s. EC2 has no m5,
/// c5, r5 or i3 below large: those halve per size down from large.
fn baseline_mbps(burstable: bool, size_index: usize) -> u32 {
    if burstable {
        32 << size_index
    } else {
        [46, 93, 187, 375, 750, 1_250][size_index]
    }
}

/// The default type of RunInstances.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";

const SIZES: [&str; 6] = ["nano", "micro", "small", "medium", "large", "xlarge"];

/// `(family prefix, family, [(vcpus, memory MiB); 6], instance-store GiB per size, burstable)`.
type FamilyRow = (&'static str, &'static str, [(u32, u64); 6], [u64; 6], bool);

const BUILT_IN: [FamilyRow; 5] = [
    (
        "t3",
        "general",
        [(2, 512), (2, 1024), (2, 2048), (2, 4096), (2, 8192), (4, 16384)],
        [0; 6],
        true,
    ),
    (
        "m5",
        "general",
        [(1, 512), (1, 1024), (1, 2048), (1, 4096), (2, 8192), (4, 16384)],
        [0; 6],
        false,
    ),
    (
        "c5",
        "compute",
        [(1, 256), (1, 512), (1, 1024), (1, 2048), (2, 4096), (4, 8192)],
        [0; 6],
        false,
    ),
    (
        "r5",
        "memory",
        [(1, 1024), (1, 2048), (1, 4096), (1, 8192), (2, 16384), (4, 32768)],
        [0; 6],
        false,
    ),
    (
        "i3",
        "storage",
        [(1, 976), (1, 1952), (1, 3904), (1, 7808), (2, 15616), (4, 31232)],
        [29, 59, 118, 237, 475, 950],
        false,
    ),
];

/// The table of instance types hearthd offers.
#[derive(Debug, Clone)]
pub struct InstanceTypes {
    types: BTreeMap<String, InstanceType>,
}

impl Default for InstanceTypes {
    fn default() -> Self {
        InstanceTypes::built_in()
    }
}

impl InstanceTypes {
    /// The built-in table.
    pub fn built_in() -> InstanceTypes {
        let mut types = BTreeMap::new();
        for (prefix, family, shapes, store_gib, burstable) in BUILT_IN {
            for (index, size) in SIZES.iter().enumerate() {
                let (vcpus, memory_mib) = shapes[index];
                let name = format!("{prefix}.{size}");
                let network_mbps = if index < 4 { 5_000 } else { 10_000 };
                types.insert(
                    name.clone(),
                    InstanceType {
                        name,
                        family: family.to_string(),
                        vcpus,
                        memory_mib,
                        instance_store_disks: u32::from(store_gib[index] > 0),
                        instance_store_gib: store_gib[index],
                        network_mbps,
                        network_baseline_mbps: baseline_mbps(burstable, index),
                        ebs_mbps: if index < 4 { 2_085 } else { 4_750 },
                        burstable,
                    },
                );
            }
        }
        InstanceTypes { types }
    }

    /// Adds (or replaces) types.
    pub fn extend(&mut self, extra: impl IntoIterator<Item = InstanceType>) {
        for instance_type in extra {
            self.types.insert(instance_type.name.clone(), instance_type);
        }
    }

    /// A type by name.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types.get(name)
    }

    /// Every type, by name.
    pub fn all(&self) -> impl Iterator<Item = &InstanceType> {
        self.types.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_table_has_every_family_and_size() {
        let types = InstanceTypes::built_in();
        assert_eq!(types.all().count(), 30);
        let micro = types.get("t3.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib, micro.burstable), (2, 1024, true));
        let storage = types.get("i3.large").unwrap();
        assert_eq!(
            (
                storage.family.as_str(),
                storage.instance_store_disks,
                storage.instance_store_gib
            ),
            ("storage", 1, 475)
        );
        assert_eq!(types.get("r5.xlarge").unwrap().memory_mib, 32768);
        assert!(types.get("t3.huge").is_none());
    }

    #[test]
    fn nic_limits_follow_the_baseline_and_burst_bandwidth() {
        let types = InstanceTypes::built_in();
        let micro = types.get("t3.micro").unwrap();
        // 0.064 Gbit/s baseline, up to 5 Gbit/s for a second.
        assert_eq!(
            micro.nic_limits(),
            NicLimits {
                packets_per_sec: 10_000,
                packets_burst: 500_000,
                bytes_per_sec: 8_000_000,
                bytes_burst: 625_000_000,
            }
        );
        let baselines: Vec<u32> = SIZES
            .iter()
            .map(|size| types.get(&format!("t3.{size}")).unwrap().network_baseline_mbps)
            .collect();
        assert_eq!(baselines, [32, 64, 128, 256, 512, 1024]);
        let large = types.get("m5.large").unwrap().nic_limits();
        assert_eq!((large.bytes_per_sec, large.packets_per_sec), (93_750_000, 75_000));
        assert_eq!(types.get("c5.xlarge").unwrap().nic_limits().bytes_per_sec, 156_250_000);
        // Bigger sizes never get less.
        for family in ["t3", "m5", "c5", "r5", "i3"] {
            let limits: Vec<NicLimits> = SIZES
                .iter()
                .map(|size| types.get(&format!("{family}.{size}")).unwrap().nic_limits())
                .collect();
            assert!(
                limits.windows(2).all(|w| w[0].bytes_per_sec < w[1].bytes_per_sec),
                "{family}"
            );
            assert!(limits
                .iter()
                .all(|l| l.bytes_burst >= l.bytes_per_sec && l.packets_burst >= l.packets_per_sec));
        }
        // A configured type without bandwidth figures is unlimited; with only "up to", that
        // is its baseline.
        let mut custom: InstanceType =
            serde_json::from_str(r#"{"name":"x1.huge","family":"memory","vcpus":8,"memory_mib":65536}"#).unwrap();
        assert_eq!(custom.nic_limits(), NicLimits::default());
        custom.network_mbps = 2_000;
        assert_eq!(custom.nic_limits().bytes_per_sec, 250_000_000);
        assert_eq!(custom.nic_limits().bytes_burst, 250_000_000);
    }

    #[test]
    fn extension_adds_and_overrides() {
        let mut types = InstanceTypes::built_in();
        let extra: Vec<InstanceType> = serde_json::from_str(
            r#"[{"name":"x1.huge","family":"memory","vcpus":8,"memory_mib":65536},
                {"name":"t3.micro","family":"general","vcpus":1,"memory_mib":1024,"burstable":true}]"#,
        )
        .unwrap();
        types.extend(extra);
        assert_eq!(types.get("x1.huge").unwrap().vcpus, 8);
        assert_eq!(types.get("t3.micro").unwrap().vcpus, 1);
    }
}
