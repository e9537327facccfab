//! Devices the VMM emulates itself (legacy and ACPI), the virtio-mmio transport, and the
//! buses that route port and MMIO exits to them.

pub mod bus;
pub mod console;
pub mod legacy;
pub mod mmio;
