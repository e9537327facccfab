//! Intel MultiProcessor Specification 1.4 table at the start of the EBDA, for kernels
//! that find their CPUs and the IOAPIC without ACPI.

use crate::layout;

const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ALL_LOCAL_APICS: u8 = 0xff;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The MP floating pointer followed by the configuration table, to be written at
/// `layout::EBDA_START`.
pub fn build(vcpus: u8) -> Vec<u8> {
    let table_addr = layout::EBDA_START as u32 + 16;
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&layout::IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // Every ISA IRQ n is IOAPIC pin n (KVM's default GSI routing); the legacy PIC is
    // reached through LINT0 below.
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[3, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, ALL_LOCAL_APICS, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, ALL_LOCAL_APICS, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HEARTH  ");
    table.extend_from_slice(b"HEARTH-VM   ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&layout::LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16 + table.len());
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating[..16]);
    floating.extend_from_slice(&table);
    floating
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_hold_and_the_table_fits_the_ebda() {
        let bytes = build(crate::config::MAX_VCPUS);
        assert!(bytes.len() <= (0xa0000 - layout::EBDA_START) as usize);
        assert_eq!(bytes[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(&bytes[16..20], b"PCMP");
        let length = u16::from_le_bytes([bytes[20], bytes[21]]) as usize;
        assert_eq!(bytes[16..16 + length].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn one_processor_entry_per_vcpu() {
        let bytes = build(4);
        let table = &bytes[16..];
        let processors = table[44..].chunks(20).take(4).filter(|e| e[0] == 0).count();
        assert_eq!(processors, 4);
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTSTRAP);
    }
}
