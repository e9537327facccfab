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
    /// Network bandwidth.
    #[serde(default)]
    pub network_mbps: u32,
    /// EBS bandwidth.
    #[serde(default)]
    pub ebs_mbps: u32,
    /// Burstable (CPU credits).
    #[serde(default)]
    pub burstable: bool,
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
