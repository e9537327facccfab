//! CPUID normalisation per vCPU: APIC IDs, topology (one thread per core, all vCPUs in
//! one socket), the hypervisor bit, cache sharing consistent with that topology, and no
//! hardware virtualization for the guest (VMX, SVM and its feature leaf hidden: like EC2's
//! default, an instance runs no nested hypervisor).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMETERS: u32 = 0x4;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXTENDED_TOPOLOGY: u32 = 0x1f;
const LEAF_EXTENDED_FEATURES: u32 = 0x8000_0001;
const LEAF_SVM_FEATURES: u32 = 0x8000_000a;
const ECX_VMX: u32 = 1 << 5;
const ECX_SVM: u32 = 1 << 2;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_X2APIC: u32 = 1 << 21;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites the host-supported CPUID for vCPU `index` of `count`.
pub fn normalize(cpuid: &mut CpuId, index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count);
    let core_bits = id_bits(count);
    for entry in cpuid.as_mut_slice().iter_mut() {
        normalize_entry(entry, apic_id, count, core_bits);
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, core_bits: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC ID, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in 8-byte units.
            entry.ebx = (apic_id << 24) | ((count.min(255)) << 16) | (8 << 8) | (entry.ebx & 0xff);
            entry.ecx |= ECX_HYPERVISOR | ECX_X2APIC;
            entry.ecx &= !ECX_VMX;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        // A cache descriptor (type != 0): [31:26] cores per package - 1; [25:14] threads
        // sharing this cache - 1. L1/L2 are per core (one thread), L3 is package-wide.
        LEAF_CACHE_PARAMETERS if entry.eax & 0x1f != 0 => {
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_EXTENDED_TOPOLOGY | LEAF_V2_EXTENDED_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0; // SMT level: one thread per core, shift 0.
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_bits;
                    entry.ebx = count;
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_EXTENDED_FEATURES => entry.ecx &= !ECX_SVM,
        LEAF_SVM_FEATURES => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology_follow_the_vcpu_index() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        normalize(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx), (1, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8, e[2].edx), (2, 4, 2, 3));
    }

    #[test]
    fn hardware_virtualization_is_hidden() {
        let mut features = entry(LEAF_FEATURES, 0);
        features.ecx = ECX_VMX | 1;
        let mut extended = entry(LEAF_EXTENDED_FEATURES, 0);
        extended.ecx = ECX_SVM | 1;
        let mut svm = entry(LEAF_SVM_FEATURES, 0);
        (svm.eax, svm.ebx, svm.edx) = (1, 0x8000, 0x1ebfbcff);
        let mut cpuid = CpuId::from_entries(&[features, extended, svm]).unwrap();
        normalize(&mut cpuid, 0, 1);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_eq!(e[0].ecx & 1, 1, "other leaf 1 features kept");
        assert_eq!(e[1].ecx, 1, "SVM hidden, the rest kept");
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (0, 0, 0, 0));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(id_bits), [0, 1, 2, 2, 3, 5]);
    }
}
