//! Legacy and ACPI platform devices: 8250 UART (console), i8042 (reset), the ACPI
//! sleep/reset registers (power-off, reboot), the power-button Generic Event Device and
//! the boot timer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::console::ConsoleOut;
use crate::events;
use crate::exit::{ExitReason, VmExit};
use crate::layout;

/// Raises an interrupt line through its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Requests a guest reboot (the i8042's CPU reset line).
pub struct ResetTrigger(pub Arc<VmExit>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::GuestReboot);
        Ok(())
    }
}

/// COM1: a 16550A-compatible UART whose output is the console.
pub struct SerialConsole(Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>>);

impl SerialConsole {
    /// A UART writing to `out`, interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self(Mutex::new(Serial::new(IrqTrigger(irq), out)))
    }

    /// Writes out a partial line the console holds, and keeps a console file within its
    /// bounds ([`ConsoleOut::tick`]).
    pub fn flush_output(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).writer_mut().tick();
    }
}

impl BusDevice for SerialConsole {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.0.lock().unwrap_or_else(|e| e.into_inner()).read(offset as u8);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(value) = data.first() {
            // An output error (full disk, closed pipe) must not stop the guest.
            let _ = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(offset as u8, *value);
        }
    }
}

/// The i8042 keyboard controller, for its CPU reset command (0xFE to port 0x64).
pub struct I8042(Mutex<I8042Device<ResetTrigger>>);

impl I8042 {
    /// Controller at ports 0x60–0x64.
    pub fn new(exit: Arc<VmExit>) -> Self {
        Self(Mutex::new(I8042Device::new(ResetTrigger(exit))))
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.0.lock().unwrap_or_else(|e| e.into_inner()).read(offset as u8);
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(value) = data.first() {
            let _ = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(offset as u8, *value);
        }
    }
}

/// The FADT's sleep control (offset 0), sleep status (1) and reset (2) registers.
pub struct AcpiPowerRegisters {
    exit: Arc<VmExit>,
}

const SLP_EN: u8 = 1 << 5;

impl AcpiPowerRegisters {
    /// Registers at `layout::ACPI_SLEEP_CONTROL_PORT`.
    pub fn new(exit: Arc<VmExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPowerRegisters {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let port = layout::ACPI_SLEEP_CONTROL_PORT + offset as u16;
        if port == layout::ACPI_SLEEP_CONTROL_PORT && value & SLP_EN != 0 && (value >> 2) & 0x7 == layout::S5_SLEEP_TYPE
        {
            self.exit.request(ExitReason::GuestPowerOff);
        } else if port == layout::ACPI_RESET_PORT && value == layout::ACPI_RESET_VALUE {
            self.exit.request(ExitReason::GuestReboot);
        }
    }
}

/// Generic Event Device: the power button. Reading the register returns and clears the
/// pending event bits.
pub struct PowerButton {
    pending: AtomicU32,
    irq: EventFd,
    presses: AtomicU64,
}

/// GED event bit of the power button.
pub const GED_POWER_BUTTON: u32 = 1;

impl PowerButton {
    /// GED interrupting through `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self {
            pending: AtomicU32::new(0),
            irq,
            presses: AtomicU64::new(0),
        }
    }

    /// Presses the power button: the guest's ACPI sees a Notify(PWRB, 0x80).
    pub fn press(&self) {
        self.pending.fetch_or(GED_POWER_BUTTON, Ordering::SeqCst);
        self.presses.fetch_add(1, Ordering::Relaxed);
        let _ = self.irq.write(1);
    }

    /// How often the button was pressed.
    pub fn presses(&self) -> u64 {
        self.presses.load(Ordering::Relaxed)
    }
}

impl BusDevice for PowerButton {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = if offset == 0 {
            self.pending.swap(0, Ordering::SeqCst)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

/// The boot timer: a guest writes 123 once it has booted; the time since the VMM started
/// is logged and kept for `info`.
pub struct BootTimer {
    start: Instant,
    boot_us: AtomicU64,
}

/// The magic value a guest writes.
pub const BOOT_TIMER_MAGIC: u8 = 123;

impl BootTimer {
    /// Timer counting from `start` (the VMM's start).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            boot_us: AtomicU64::new(0),
        }
    }

    /// Microseconds from VMM start to the first marker, if written.
    pub fn boot_time_us(&self) -> Option<u64> {
        match self.boot_us.load(Ordering::SeqCst) {
            0 => None,
            us => Some(us),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            let us = (self.start.elapsed().as_micros() as u64).max(1);
            if self
                .boot_us
                .compare_exchange(0, us, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                events::emit(
                    "boot-timer",
                    serde_json::json!({ "boot_us": us, "boot_ms": us as f64 / 1000.0 }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn s5_write_powers_off_and_reset_register_reboots() {
        let exit = Arc::new(VmExit::new().unwrap());
        let regs = AcpiPowerRegisters::new(exit.clone());
        regs.write(0, &[0x20]); // SLP_EN with SLP_TYP 0: not S5
        assert!(!exit.is_requested());
        regs.write(0, &[(5 << 2) | 0x20]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPowerOff));

        let exit = Arc::new(VmExit::new().unwrap());
        AcpiPowerRegisters::new(exit.clone()).write(2, &[1]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReboot));
    }

    #[test]
    fn i8042_reset_command_reboots() {
        let exit = Arc::new(VmExit::new().unwrap());
        let i8042 = I8042::new(exit.clone());
        i8042.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReboot));
    }

    #[test]
    fn power_button_event_is_read_once_and_raises_the_irq() {
        let button = PowerButton::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut data = [0u8; 4];
        button.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0);
        button.press();
        assert_eq!(button.irq.read().unwrap(), 1);
        button.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), GED_POWER_BUTTON);
        button.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0);
    }

    #[test]
    fn boot_timer_keeps_the_first_marker_only() {
        let timer = BootTimer::new(Instant::now());
        timer.write(0, &[1]);
        assert_eq!(timer.boot_time_us(), None);
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = timer.boot_time_us().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(timer.boot_time_us(), Some(first));
    }

    #[test]
    fn serial_output_reaches_the_console() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let serial = SerialConsole::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ConsoleOut::stream(Box::new(out.clone())),
        );
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        // A partial line is held until flushed; a newline writes the line at once.
        assert_eq!(out.0.lock().unwrap().as_slice(), b"");
        serial.flush_output();
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");
        for b in b" there\nand" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi there\n");
        // A line longer than the limit is written in pieces of the limit.
        for _ in 0..ConsoleOut::LINE_LIMIT {
            serial.write(0, b"x");
        }
        assert_eq!(out.0.lock().unwrap().len(), "hi there\n".len() + ConsoleOut::LINE_LIMIT);
        // What is held when the UART goes away is written then.
        serial.write(0, b"!");
        drop(serial);
        assert!(out.0.lock().unwrap().ends_with(b"x!"));
    }
}
