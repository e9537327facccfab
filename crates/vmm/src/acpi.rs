//! ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (→ DSDT) and MADT.
//! The DSDT declares the COM1 UART, a power button driven by a Generic Event Device,
//! `\_S5_`, and every virtio-mmio slot as `LNRO0005`, so a stock kernel finds them.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::layout;

const OEM_ID: [u8; 6] = *b"HEARTH";
const OEM_TABLE_ID: [u8; 8] = *b"HEARTHVM";
const OEM_REVISION: u32 = 1;

// FADT IAPC_BOOT_ARCH flags (ACPI 6.5, table 5.11).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// One table and where it goes in guest memory.
#[derive(Debug, Clone)]
pub struct AcpiTable {
    /// Four-letter signature (`RSDP` for the root pointer).
    pub signature: String,
    /// Guest-physical address.
    pub address: u64,
    /// Table bytes, checksummed.
    pub bytes: Vec<u8>,
}

/// What the tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiLayout {
    /// Number of vCPUs (one enabled local APIC each, APIC ID = index).
    pub vcpus: u8,
    /// Number of virtio-mmio slots in use.
    pub virtio_slots: usize,
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(port))
}

/// The DSDT's AML body.
fn dsdt_body(virtio_slots: usize) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5_: SLP_TYPa = SLP_TYPb = 5, matching the sleep control register device.
    let s5_type = layout::S5_SLEEP_TYPE;
    let zero = aml::ZERO;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_type, &s5_type, &zero, &zero]),
    )
    .to_aml_bytes(&mut body);

    let mut devices: Vec<Vec<u8>> = Vec::new();

    let com1_io = aml::IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    devices.push(to_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )));

    devices.push(to_bytes(&aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )));

    // Generic Event Device: reading GDAT returns (and clears) pending events; bit 0 is
    // the power button, forwarded to the PWRB device as Notify(0x80). Its `_CRS` holds
    // the interrupt alone: Linux's acpi-ged walks `_CRS` and refuses the device (-EINVAL,
    // "unable to parse IRQ resource") on any other resource; the register window is
    // reached through the OpRegion below.
    let ged_irq = aml::Interrupt::new(true, true, false, false, layout::GED_IRQ);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_addr = layout::GED_ADDR as u32;
    let ged_size = layout::GED_SIZE as u32;
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemMemory, &ged_addr, &ged_size);
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );
    let gdat = aml::Path::new("GDAT");
    let local0 = aml::Local(0);
    let power_button_bit = aml::ONE;
    let masked = aml::And::new(&aml::ZERO, &local0, &power_button_bit);
    let pressed = aml::Equal::new(&masked, &aml::ONE);
    let notify_value: u8 = 0x80;
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&pwrb, &notify_value);
    let store = aml::Store::new(&local0, &gdat);
    let if_pressed = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&store, &if_pressed]);
    devices.push(to_bytes(&aml::Device::new(
        "GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &ged_crs),
            &region,
            &field,
            &evt,
        ],
    )));

    for slot in 0..virtio_slots {
        let window = aml::Memory32Fixed::new(
            true,
            layout::virtio_slot_addr(slot) as u32,
            layout::VIRTIO_MMIO_SIZE as u32,
        );
        let irq = aml::Interrupt::new(true, true, false, false, layout::virtio_slot_irq(slot));
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let uid = slot as u32;
        devices.push(to_bytes(&aml::Device::new(
            format!("V{slot:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )));
    }

    let raw: Vec<RawAml> = devices.into_iter().map(RawAml).collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    body
}

/// Already-encoded AML.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Builds every table with its guest address, RSDP first.
pub fn build(acpi: AcpiLayout) -> Vec<AcpiTable> {
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_addr = layout::ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(acpi.virtio_slots));
    let dsdt_addr = next;
    next = align(next + dsdt.len() as u64);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power button is a control-method device (PWRB), not a fixed feature.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // IA-PC boot architecture: no legacy devices, no 8042 (its reset port still reboots),
    // no VGA, no MSI (no PCI at all) and no CMOS RTC. Linux then skips probing ports for
    // an i8042 and an RTC that are not there (each probe exits to the VMM: ~3.7 s of boot
    // in the nested lab); the guest's wall clock comes from kvmclock.
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_register(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"HEARTH\0\0").into();
    let fadt_bytes = to_bytes(&fadt.finalize());
    let fadt_addr = next;
    next = align(next + fadt_bytes.len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_ADDR),
    );
    for cpu in 0..acpi.vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(acpi.vcpus, layout::IOAPIC_ADDR, 0));
    let madt_bytes = to_bytes(&madt);
    let madt_addr = next;
    next = align(next + madt_bytes.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = to_bytes(&xsdt);
    let xsdt_addr = next;

    let rsdp_bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    let table = |signature: &str, address: u64, bytes: Vec<u8>| AcpiTable {
        signature: signature.to_string(),
        address,
        bytes,
    };
    vec![
        table("RSDP", rsdp_addr, rsdp_bytes),
        table("XSDT", xsdt_addr, xsdt_bytes),
        table("FACP", fadt_addr, fadt_bytes),
        table("APIC", madt_addr, madt_bytes),
        table("DSDT", dsdt_addr, dsdt.as_slice().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn tables_fit_the_acpi_area_with_valid_checksums() {
        let tables = build(AcpiLayout {
            vcpus: 32,
            virtio_slots: crate::config::MAX_VIRTIO_DEVICES,
        });
        for table in &tables {
            assert!(
                table.address + table.bytes.len() as u64 <= layout::ACPI_END,
                "{}",
                table.signature
            );
            if table.signature == "RSDP" {
                assert_eq!(sum(&table.bytes[..20]), 0);
                assert_eq!(sum(&table.bytes), 0);
            } else {
                assert_eq!(&table.bytes[..4], table.signature.as_bytes());
                assert_eq!(sum(&table.bytes), 0, "checksum of {}", table.signature);
                let length = u32::from_le_bytes(table.bytes[4..8].try_into().unwrap()) as usize;
                assert_eq!(length, table.bytes.len(), "length of {}", table.signature);
            }
        }
    }

    #[test]
    fn madt_lists_one_local_apic_per_vcpu() {
        let tables = build(AcpiLayout {
            vcpus: 4,
            virtio_slots: 1,
        });
        let madt = &tables.iter().find(|t| t.signature == "APIC").unwrap().bytes;
        let mut offset = 44;
        let mut cpus = 0;
        while offset < madt.len() {
            if madt[offset] == 0 && madt[offset + 4] & 1 == 1 {
                cpus += 1;
            }
            offset += madt[offset + 1] as usize;
        }
        assert_eq!(cpus, 4);
    }

    #[test]
    fn dsdt_names_every_virtio_slot() {
        let tables = build(AcpiLayout {
            vcpus: 1,
            virtio_slots: 3,
        });
        let dsdt = &tables.iter().find(|t| t.signature == "DSDT").unwrap().bytes;
        let count = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 3);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }
}
