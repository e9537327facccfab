//! The guest-physical memory map and device placement (see `docs/vmm-hardware.md`).

/// GDT (four 8-byte entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages, 4 GiB identity map).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line including its NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the EBDA, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// The BIOS area where ACPI tables live; the RSDP is at its start.
pub const ACPI_START: u64 = 0xe0000;
/// End (exclusive) of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Kernels are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Start of RAM above the gap.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of virtio-mmio slot 0; slot n uses `VIRTIO_IRQ_BASE + n`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Boot timer register (write 123 = boot marker).
pub const BOOT_TIMER_ADDR: u64 = 0xd100_0000;
/// Generic Event Device register (bit 0 = power button).
pub const GED_ADDR: u64 = 0xd200_0000;
/// GED register size.
pub const GED_SIZE: u64 = 4;
/// GSI of the GED.
pub const GED_IRQ: u32 = 23;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// COM1 I/O base and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI sleep control register (FADT SLEEP_CONTROL_REG).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT SLEEP_STATUS_REG).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG).
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value written to the reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 1;
/// SLP_TYP of S5 as declared by `\_S5_`.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Guest RAM regions for `mem_mib` MiB: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_mib: u64) -> Vec<(u64, u64)> {
    let size = mem_mib << 20;
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (HIGH_RAM_START, size - MMIO_GAP_START)]
    }
}

/// Address of virtio-mmio slot `slot`.
pub fn virtio_slot_addr(slot: usize) -> u64 {
    VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of virtio-mmio slot `slot`.
pub fn virtio_slot_irq(slot: usize) -> u32 {
    VIRTIO_IRQ_BASE + slot as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_gap() {
        assert_eq!(ram_regions(128), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(3072), vec![(0, 3 << 30)]);
        assert_eq!(ram_regions(4096), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }

    #[test]
    fn virtio_slots_fit_below_the_boot_timer_and_irqs_below_the_ged() {
        let last = crate::config::MAX_VIRTIO_DEVICES - 1;
        assert!(virtio_slot_addr(last) + VIRTIO_MMIO_SIZE <= BOOT_TIMER_ADDR);
        assert!(virtio_slot_irq(last) < GED_IRQ);
    }
}
