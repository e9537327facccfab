//! Linux 64-bit direct boot: kernel, initrd and command line into guest memory, and the
//! zero page (`boot_params`) with the e820 map, exactly as a Linux bootloader leaves them.

pub mod cpuid;
pub mod mptable;
pub mod regs;

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;
use crate::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `loadflags`: kernel loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// `loadflags`: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// Offset of the 64-bit entry point in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A boot step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// Kernel path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF vmlinux nor a bzImage could be loaded.
    #[error("cannot load kernel {path}: not a loadable ELF vmlinux ({elf}) nor bzImage ({bzimage})")]
    LoadKernel {
        /// Kernel path.
        path: String,
        /// The ELF loader's complaint.
        elf: linux_loader::loader::Error,
        /// The bzImage loader's complaint.
        bzimage: linux_loader::loader::Error,
    },
    /// The initrd could not be read or does not fit.
    #[error("cannot load initrd {path}: {reason}")]
    Initrd {
        /// Initrd path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line or zero page failed.
    #[error("cannot write boot data to guest memory: {0}")]
    Configure(String),
}

/// Where the kernel starts and what the loader found.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Guest address of the 64-bit entry point.
    pub entry: GuestAddress,
    /// The bzImage's setup header (None for an ELF vmlinux).
    pub setup_header: Option<linux_loader::bootparam::setup_header>,
    /// First byte past the kernel image.
    pub end: u64,
}

/// Loads an ELF vmlinux (at its physical addresses) or a bzImage (at 1 MiB).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let display = path.display().to_string();
    let open = || {
        File::open(path).map_err(|source| BootError::OpenKernel {
            path: display.clone(),
            source,
        })
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let elf_error = match Elf::load(mem, None, &mut open()?, himem) {
        Ok(result) => {
            return Ok(LoadedKernel {
                entry: result.kernel_load,
                setup_header: None,
                end: result.kernel_end,
            })
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut open()?, himem) {
        Ok(result) => Ok(LoadedKernel {
            entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
            setup_header: result.setup_header,
            end: result.kernel_end,
        }),
        Err(bzimage) => Err(BootError::LoadKernel {
            path: display,
            elf: elf_error,
            bzimage,
        }),
    }
}

/// Loads the initrd page-aligned at the top of low RAM (below the MMIO gap, above the
/// kernel). Returns (address, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let fail = |reason: String| BootError::Initrd {
        path: path.display().to_string(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let low_end = mem.iter().next().map(|r| r.start_addr().0 + r.len()).unwrap_or(0);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(layout::HIMEM_START))
        .ok_or_else(|| fail(format!("{size} bytes do not fit in guest RAM above the kernel")))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| fail(e.to_string()))?;
    Ok((addr, size))
}

/// The e820 map for the guest's RAM regions (see `docs/vmm-hardware.md`).
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, r#type: u32| boot_e820_entry { addr, size, r#type };
    let mut map = vec![
        entry(0, layout::EBDA_START, E820_RAM),
        entry(layout::EBDA_START, 0xa0000 - layout::EBDA_START, E820_RESERVED),
        entry(layout::ACPI_START, layout::ACPI_END - layout::ACPI_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().0.max(layout::HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Whether the guest is told to ignore ACPI (`acpi=off` on its command line).
pub fn acpi_off(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|arg| arg == "acpi=off")
}

/// Builds the command line the guest sees: the configured one, and — only when it turns
/// ACPI off — one `virtio_mmio.device=` argument per virtio slot. The DSDT announces every
/// slot (`LNRO0005`); announcing them on the command line too made Linux find each device
/// twice (the second probe fails with -EBUSY).
pub fn build_cmdline(base: &str, virtio_slots: usize) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base).map_err(BootError::Cmdline)?;
    }
    let announced = if acpi_off(base) { virtio_slots } else { 0 };
    for slot in 0..announced {
        cmdline
            .insert_str(format!(
                "virtio_mmio.device=4K@{:#x}:{}",
                layout::virtio_slot_addr(slot),
                layout::virtio_slot_irq(slot)
            ))
            .map_err(BootError::Cmdline)?;
    }
    let length = cmdline.as_cstring().map_err(BootError::Cmdline)?.as_bytes().len();
    if length >= crate::config::MAX_CMDLINE_LEN {
        return Err(BootError::Configure(format!(
            "command line is {length} bytes, Linux accepts at most {}",
            crate::config::MAX_CMDLINE_LEN - 1
        )));
    }
    Ok(cmdline)
}

#[derive(Clone, Copy, Default)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data C struct (integers and arrays only), valid for
// any bit pattern.
unsafe impl ByteValued for ZeroPage {}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(|e| BootError::Configure(format!("command line: {e}")))?;
    let cmdline_len = cmdline.as_cstring().map_err(BootError::Cmdline)?.as_bytes().len();

    let mut params = ZeroPage::default();
    if let Some(header) = kernel.setup_header {
        params.0.hdr = header;
    }
    let hdr = &mut params.0.hdr;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
        params.0.ext_ramdisk_image = (addr >> 32) as u32;
        params.0.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.0.acpi_rsdp_addr = layout::ACPI_START;
    let map = e820_map(mem);
    if map.len() > params.0.e820_table.len() {
        return Err(BootError::Configure("e820 map too long".into()));
    }
    params.0.e820_entries = map.len() as u8;
    params.0.e820_table[..map.len()].copy_from_slice(&map);

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Configure(format!("zero page: {e}")))?;
    Ok(())
}

/// Writes `bytes` at `addr` (helper for the table writers).
pub fn write_bytes(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| BootError::Configure(format!("write {} bytes at {addr:#x}: {e}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(mib: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = layout::ram_regions(mib)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn e820_covers_ram_and_reserves_tables() {
        let mem = memory(256);
        let map = e820_map(&mem);
        let summary: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            summary,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x400, E820_RESERVED),
                (0xe0000, 0x20000, E820_RESERVED),
                (0x100000, (256 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn cmdline_lists_the_virtio_slots_only_without_acpi() {
        let cmdline = build_cmdline("console=ttyS0", 2).unwrap();
        assert_eq!(cmdline.as_cstring().unwrap().to_str().unwrap(), "console=ttyS0");
        let cmdline = build_cmdline("console=ttyS0 acpi=off", 2).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 acpi=off virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert!(!acpi_off("console=ttyS0 xacpi=off"));
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        assert!(build_cmdline(&"a".repeat(3000), 0).is_err());
    }

    #[test]
    fn zero_page_has_cmdline_and_e820() {
        let mem = memory(64);
        let kernel = LoadedKernel {
            entry: GuestAddress(0x200000),
            setup_header: None,
            end: 0x300000,
        };
        let cmdline = build_cmdline("console=ttyS0", 0).unwrap();
        write_boot_params(&mem, &kernel, &cmdline, Some((0x3000000, 0x1000))).unwrap();
        let params: ZeroPage = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.0.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ params.0.hdr.ramdisk_image }, 0x3000000);
        assert_eq!({ params.0.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(params.0.e820_entries, 4);
        assert_eq!({ params.0.acpi_rsdp_addr }, layout::ACPI_START);
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(layout::CMDLINE_START)).unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
    }
}
