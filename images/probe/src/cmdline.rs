//! The Linux zero page (`boot_params`) and the kernel command line: lookup and number parsing.

/// `boot_params.acpi_rsdp_addr` (u64).
const ACPI_RSDP_ADDR: usize = 0x070;
/// `boot_params.e820_entries` (u8).
const E820_ENTRIES: usize = 0x1e8;
/// `boot_params.e820_table`: 20-byte entries `u64 addr, u64 size, u32 type`.
const E820_TABLE: usize = 0x2d0;
/// Entries the zero page has room for.
const E820_MAX: usize = 128;
/// `boot_params.ext_cmd_line_ptr` (u32, high half of the command line address).
const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `boot_params.hdr.cmd_line_ptr` (u32).
const CMD_LINE_PTR: usize = 0x228;
/// The command line is at most 4095 bytes plus its NUL.
const CMDLINE_MAX: usize = 4096;
/// Everything the probe reads must lie in the identity-mapped first 4 GiB.
const MAPPED_END: u64 = 1 << 32;

/// The zero page handed over in RSI.
pub struct BootParams(usize);

impl BootParams {
    /// # Safety
    /// `addr` must be the zero page the VMM filled in (4 KiB of RAM the probe only reads).
    pub unsafe fn new(addr: usize) -> Self {
        Self(addr)
    }

    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is a field of the 4 KiB zero page (`new`'s contract).
        unsafe { ((self.0 + offset) as *const u32).read_unaligned() }
    }

    fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: as for `read_u32`.
        unsafe { ((self.0 + offset) as *const u64).read_unaligned() }
    }

    /// True when an e820 RAM entry (type 1) covers `[start, start + len)`.
    pub fn is_ram(&self, start: u64, len: u64) -> bool {
        let entries = (self.read_u32(E820_ENTRIES) & 0xff) as usize;
        (0..entries.min(E820_MAX)).any(|i| {
            let entry = E820_TABLE + i * 20;
            let (addr, size, kind) = (
                self.read_u64(entry),
                self.read_u64(entry + 8),
                self.read_u32(entry + 16),
            );
            kind == 1 && addr <= start && start.saturating_add(len) <= addr.saturating_add(size)
        })
    }

    /// `acpi_rsdp_addr`, 0 if the VMM gave none.
    pub fn acpi_rsdp_addr(&self) -> u64 {
        self.read_u64(ACPI_RSDP_ADDR)
    }

    /// The NUL-terminated command line, without its NUL (empty if there is none).
    pub fn cmdline(&self) -> &'static [u8] {
        let addr = u64::from(self.read_u32(CMD_LINE_PTR)) | u64::from(self.read_u32(EXT_CMD_LINE_PTR)) << 32;
        if addr == 0 || addr + CMDLINE_MAX as u64 > MAPPED_END {
            return &[];
        }
        // SAFETY: the VMM stores the command line, NUL included, in at most 4096 bytes of
        // identity-mapped RAM at `addr`; the probe never writes it.
        let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, CMDLINE_MAX) };
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(CMDLINE_MAX - 1);
        bytes.get(..len).unwrap_or(&[])
    }
}

/// The space-separated arguments of a command line.
pub fn args(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .filter(|a| !a.is_empty())
}

/// The value of the last `key=value` argument.
pub fn value<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    args(line)
        .filter_map(|arg| split_once(arg, b'=').filter(|(k, _)| *k == key))
        .map(|(_, v)| v)
        .last()
}

/// Splits at the first `sep`.
pub fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// A decimal number, or a hexadecimal one after `0x`.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &c in digits {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' if radix == 16 => c - b'a' + 10,
            b'A'..=b'F' if radix == 16 => c - b'A' + 10,
            _ => return None,
        };
        value = value.checked_mul(radix)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

/// A size as Linux's `memparse` reads it: a number with an optional K, M or G suffix.
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let (number, shift) = match s.split_last() {
        Some((b'K' | b'k', rest)) => (rest, 10),
        Some((b'M' | b'm', rest)) => (rest, 20),
        Some((b'G' | b'g', rest)) => (rest, 30),
        _ => (s, 0),
    };
    parse_u64(number)?.checked_mul(1 << shift)
}

/// A dotted-quad IPv4 address.
pub fn parse_ip(s: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for octet in ip.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || part.starts_with(b"0x") {
            return None;
        }
        *octet = u8::try_from(parse_u64(part)?).ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(ip),
    }
}
