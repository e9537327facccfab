//! Port I/O, MMIO windows and the machine-level actions (boot timer, power off, resets).

use core::arch::asm;

/// ACPI sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
/// `SLP_TYP` = 5 (S5) << 2 | `SLP_EN`: power off.
pub const SLEEP_S5: u8 = 0x34;
/// ACPI reset register (FADT `RESET_REG`) and its reset value.
const ACPI_RESET: u16 = 0x602;
const ACPI_RESET_VALUE: u8 = 0x01;
/// i8042 command port and its "pulse reset line" command.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// COM1 line status register: read only to let time pass with a VM exit per read.
const UART_LSR: u16 = 0x3fd;
/// Boot timer register and the marker value it records.
const BOOT_TIMER: usize = 0xd100_0000;
const BOOT_TIMER_MARK: u8 = 123;
/// Generic Event Device register: bit 0 = power button pressed (clear on read).
const GED: usize = 0xd200_0000;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory Rust knows about; the probe owns the machine.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

/// A device register window in the MMIO gap (never RAM that Rust uses).
#[derive(Clone, Copy)]
pub struct Mmio(usize);

impl Mmio {
    /// # Safety
    /// `base` and the offsets later used with it must address device registers, not memory
    /// that Rust code owns.
    pub const unsafe fn new(base: usize) -> Self {
        Self(base)
    }

    /// 32-bit register read.
    pub fn read32(self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract: a device register, read with one volatile access.
        unsafe { ((self.0 + offset) as *const u32).read_volatile() }
    }

    /// 32-bit register write.
    pub fn write32(self, offset: usize, value: u32) {
        // SAFETY: as for `read32`.
        unsafe { ((self.0 + offset) as *mut u32).write_volatile(value) }
    }

    /// 8-bit register read.
    pub fn read8(self, offset: usize) -> u8 {
        // SAFETY: as for `read32`.
        unsafe { ((self.0 + offset) as *const u8).read_volatile() }
    }

    /// 8-bit register write.
    pub fn write8(self, offset: usize, value: u8) {
        // SAFETY: as for `read32`.
        unsafe { ((self.0 + offset) as *mut u8).write_volatile(value) }
    }
}

/// Writes the boot marker to the boot timer.
pub fn boot_timer() {
    // SAFETY: docs/vmm-hardware.md puts the boot timer register at this MMIO address.
    unsafe { Mmio::new(BOOT_TIMER) }.write8(0, BOOT_TIMER_MARK);
}

/// Reads (and thereby clears) the GED event bits; true if the power button was pressed.
pub fn power_button_pressed() -> bool {
    // SAFETY: docs/vmm-hardware.md puts the GED register at this MMIO address.
    unsafe { Mmio::new(GED) }.read32(0) & 1 != 0
}

/// Lets a moment pass (a few thousand VM exits) before concluding a reset did not happen.
fn settle() {
    for _ in 0..4096 {
        inb(UART_LSR);
    }
}

/// Stops here for good: interrupts off, a jump to itself, no polling.
pub fn hang() -> ! {
    // SAFETY: `cli` and a self-jump; never returns.
    unsafe { asm!("cli", "2: jmp 2b", options(noreturn, nomem, nostack)) }
}

/// ACPI S5 through the FADT sleep control register.
pub fn poweroff() -> ! {
    say!("poweroff");
    outb(ACPI_SLEEP_CONTROL, SLEEP_S5);
    settle();
    say!("poweroff failed");
    hang()
}

/// Reset through the i8042 controller.
pub fn reboot() -> ! {
    say!("reboot");
    outb(I8042_COMMAND, I8042_RESET);
    settle();
    say!("reboot failed");
    hang()
}

/// Reset through the FADT reset register.
pub fn acpi_reset() -> ! {
    say!("acpi reset");
    outb(ACPI_RESET, ACPI_RESET_VALUE);
    settle();
    say!("acpi reset failed");
    hang()
}

/// Loads an empty IDT and raises #UD: #UD, then #DF, cannot be delivered: triple fault.
pub fn triple_fault() -> ! {
    // limit = 0, base = 0 (the 10-byte `lidt` operand).
    let idt = [0u16; 5];
    // SAFETY: deliberately leaves the machine; `lidt` only reads the 10-byte operand.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) idt.as_ptr(), options(noreturn, nostack)) }
}
