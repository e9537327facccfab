//! ACPI walk for the `cpus` op (RSDP, XSDT or RSDT, every table's checksum, MADT CPUs) and
//! for device discovery (the DSDT's virtio-mmio `LNRO0005` devices).

use crate::uart::{write, Dec};

/// The legacy BIOS area scanned for the RSDP when the zero page names none.
const SCAN_START: u64 = 0xe0000;
const SCAN_END: u64 = 0x100000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// Everything read must lie in the identity-mapped first 4 GiB.
const MAPPED_END: u64 = 1 << 32;
/// Larger "tables" are taken as garbage.
const TABLE_MAX: usize = 1 << 20;
const HEADER_LEN: usize = 36;
/// Where the MADT's interrupt controller structures start.
const MADT_ENTRIES: usize = 44;
const MADT_LOCAL_APIC: u8 = 0;
/// Bad checksums remembered for printing after the table list.
const MAX_BAD: usize = 16;

/// `len` bytes of guest-physical memory at `addr`, if they lie in the mapped 4 GiB.
fn phys(addr: u64, len: usize) -> Option<&'static [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || len > TABLE_MAX || end > MAPPED_END {
        return None;
    }
    // SAFETY: the first 4 GiB are identity mapped; ACPI tables live in memory the probe
    // never writes, and reading it has no side effects.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

fn le32(s: &[u8], offset: usize) -> u32 {
    match s.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn le64(s: &[u8], offset: usize) -> u64 {
    u64::from(le32(s, offset)) | u64::from(le32(s, offset + 4)) << 32
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

/// A whole table (as long as its header says) at `addr`.
fn table(addr: u64) -> Option<&'static [u8]> {
    let len = le32(phys(addr, HEADER_LEN)?, 4) as usize;
    if len < HEADER_LEN {
        return None;
    }
    phys(addr, len)
}

fn signature(table: &[u8]) -> [u8; 4] {
    le32(table, 0).to_le_bytes()
}

/// The RSDP's address: the zero page's `acpi_rsdp_addr`, else a scan of 0xE0000-0xFFFFF
/// for a signature with a valid checksum.
fn find_rsdp(hint: u64) -> Option<u64> {
    let signed = |addr: u64| phys(addr, 20).filter(|r| r.starts_with(RSDP_SIGNATURE));
    if signed(hint).is_some() {
        return Some(hint);
    }
    (SCAN_START..SCAN_END)
        .step_by(16)
        .find(|&addr| signed(addr).is_some_and(sums_to_zero))
}

/// Signatures with a bad checksum, in the order found.
struct BadSums {
    sigs: [[u8; 4]; MAX_BAD],
    count: usize,
}

impl BadSums {
    /// Remembers `sig` unless `ok`.
    fn note(&mut self, sig: [u8; 4], ok: bool) {
        if ok {
            return;
        }
        if let Some(slot) = self.sigs.get_mut(self.count) {
            *slot = sig;
            self.count += 1;
        }
    }

    /// Checks the checksum of a whole table.
    fn check(&mut self, sig: [u8; 4], bytes: &[u8]) {
        self.note(sig, sums_to_zero(bytes));
    }
}

/// The `cpus` op. Prints `probe: acpi tables RSDP XSDT ...`, one `probe: acpi checksum bad
/// <SIG>` per bad table and `probe: cpus <N>` (enabled local APICs of the MADT).
pub fn cpus(rsdp_hint: u64) {
    let mut bad = BadSums {
        sigs: [[0; 4]; MAX_BAD],
        count: 0,
    };
    let mut madt: Option<&[u8]> = None;
    match find_rsdp(rsdp_hint) {
        None => say!("acpi no RSDP"),
        Some(rsdp_addr) => {
            // ACPI 1.0: 20 bytes; 2.0+: as long as it says, with an extended checksum.
            let rsdp20 = phys(rsdp_addr, 20).unwrap_or(&[]);
            let revision = rsdp20.get(15).copied().unwrap_or(0);
            let rsdp = match revision {
                0 => Some(rsdp20),
                _ => phys(rsdp_addr, 36).and_then(|r| phys(rsdp_addr, (le32(r, 20) as usize).max(36))),
            }
            .unwrap_or(rsdp20);
            bad.note(*b"RSDP", sums_to_zero(rsdp20) && sums_to_zero(rsdp));
            let xsdt = le64(rsdp, 24);
            let (root, entry_len) = match revision {
                0 => (u64::from(le32(rsdp, 16)), 4),
                _ if xsdt == 0 => (u64::from(le32(rsdp, 16)), 4),
                _ => (xsdt, 8),
            };
            write(b"probe: acpi tables RSDP");
            if let Some(root) = table(root) {
                let root_sig = signature(root);
                write(b" ");
                write(&root_sig);
                bad.check(root_sig, root);
                let entries = root.get(HEADER_LEN..).unwrap_or(&[]);
                for entry in entries.chunks_exact(entry_len) {
                    let addr = if entry_len == 8 {
                        le64(entry, 0)
                    } else {
                        u64::from(le32(entry, 0))
                    };
                    let Some(t) = table(addr) else { continue };
                    let sig = signature(t);
                    write(b" ");
                    write(&sig);
                    bad.check(sig, t);
                    match &sig {
                        b"FACP" => {
                            // X_DSDT (ACPI 2.0+, offset 140) wins over the 32-bit DSDT (40).
                            let x_dsdt = if t.len() >= 148 { le64(t, 140) } else { 0 };
                            let dsdt = if x_dsdt != 0 { x_dsdt } else { u64::from(le32(t, 40)) };
                            if let Some(d) = table(dsdt) {
                                let dsig = signature(d);
                                write(b" ");
                                write(&dsig);
                                bad.check(dsig, d);
                            }
                        }
                        b"APIC" => madt = Some(t),
                        _ => {}
                    }
                }
            }
            write(b"\n");
        }
    }
    for sig in bad.sigs.iter().take(bad.count) {
        say!("acpi checksum bad ", &sig[..]);
    }
    let cpus = madt.map_or(0, enabled_local_apics);
    say!("cpus ", Dec(cpus));
}

/// Counts the MADT's enabled processor local APIC entries (type 0, flags bit 0).
fn enabled_local_apics(madt: &[u8]) -> u64 {
    let mut count = 0;
    let mut offset = MADT_ENTRIES;
    while let Some(&[kind, len]) = madt.get(offset..offset + 2) {
        if len < 2 {
            break;
        }
        if kind == MADT_LOCAL_APIC && len >= 8 && le32(madt, offset + 4) & 1 != 0 {
            count += 1;
        }
        offset += usize::from(len);
    }
    count
}

/// The DSDT (through RSDP → XSDT/RSDT → FADT), if there is one.
fn dsdt(rsdp_hint: u64) -> Option<&'static [u8]> {
    let rsdp_addr = find_rsdp(rsdp_hint)?;
    let rsdp = phys(rsdp_addr, 36)?;
    let (root, entry_len) = match (rsdp[15], le64(rsdp, 24)) {
        (0, _) | (_, 0) => (u64::from(le32(rsdp, 16)), 4),
        (_, xsdt) => (xsdt, 8),
    };
    let root = table(root)?;
    let entries = root.get(HEADER_LEN..)?;
    entries.chunks_exact(entry_len).find_map(|entry| {
        let addr = if entry_len == 8 {
            le64(entry, 0)
        } else {
            u64::from(le32(entry, 0))
        };
        let t = table(addr).filter(|t| &signature(t) == b"FACP")?;
        let x_dsdt = if t.len() >= 148 { le64(t, 140) } else { 0 };
        table(if x_dsdt != 0 { x_dsdt } else { u64::from(le32(t, 40)) })
    })
}

/// A virtio-mmio device of the DSDT: its register window and interrupt.
#[derive(Clone, Copy)]
pub struct MmioDevice {
    pub addr: u64,
    pub irq: u64,
}

/// Large resource descriptors of a `_CRS` (ACPI 6.5, 6.4.3), with their fixed lengths:
/// Memory32Fixed (tag, length, information, base at +4, size at +8) and Extended
/// Interrupt (tag, length, flags, count, first interrupt at +5).
const MEMORY32_FIXED: [u8; 3] = [0x86, 0x09, 0x00];
const EXTENDED_IRQ: [u8; 3] = [0x89, 0x06, 0x00];

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The DSDT's `LNRO0005` (virtio-mmio) devices, in table order, into `out`; returns how
/// many. Each device's `_CRS` follows its `_HID`: the first Memory32Fixed base and the
/// first Extended Interrupt after the ID are its window and interrupt (the layout
/// hearth-vmm writes; not a general AML interpreter).
pub fn virtio_devices(rsdp_hint: u64, out: &mut [MmioDevice]) -> usize {
    let Some(dsdt) = dsdt(rsdp_hint) else { return 0 };
    let mut count = 0;
    let mut rest = dsdt.get(HEADER_LEN..).unwrap_or(&[]);
    while let Some(at) = find(rest, b"LNRO0005\0") {
        // (get, not indexing: a failed index would pull in core::fmt, which uses SSE)
        rest = rest.get(at + 9..).unwrap_or(&[]);
        // The next device's ID bounds this one's resources.
        let end = find(rest, b"LNRO0005\0").unwrap_or(rest.len());
        let body = rest.get(..end).unwrap_or(&[]);
        let addr = find(body, &MEMORY32_FIXED).map(|i| le32(body, i + 4));
        let irq = find(body, &EXTENDED_IRQ).map(|i| le32(body, i + 5));
        if let (Some(addr), Some(irq), Some(slot)) = (addr, irq, out.get_mut(count)) {
            *slot = MmioDevice {
                addr: u64::from(addr),
                irq: u64::from(irq),
            };
            count += 1;
        }
    }
    count
}
