//! The virtio-mmio transport (virtio 1.x §4.2.2, version 2 register layout): feature
//! negotiation, queue configuration and device status for one `VirtioDevice`.

use std::sync::{Arc, Mutex};

use hearth_devices::virtio::{Interrupt, QueueContext, VirtioDevice, INTERRUPT_CONFIG_CHANGE, VIRTIO_F_VERSION_1};
use virtio_queue::{Queue, QueueT};

use super::bus::BusDevice;
use crate::GuestMemoryMmap;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_5248; // "HRTH"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of `QueueNotify`, where the queue ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// One virtio-mmio slot: the device, its queues and the transport registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; its queues start unconfigured.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, interrupt: Arc<Interrupt>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|max| Queue::new(*max).expect("queue sizes are powers of two"))
            .collect();
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    /// Number of queues (one ioeventfd each).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// True once the driver set DRIVER_OK and the device accepted it.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The driver notified queue `index` (ioeventfd or a trapped `QueueNotify` write).
    pub fn notify_queue(&mut self, index: usize) {
        if !self.activated || index >= self.queues.len() || !self.queues[index].ready() {
            return;
        }
        let mut ctx = QueueContext {
            mem: &self.mem,
            queues: &mut self.queues,
            interrupt: &self.interrupt,
        };
        self.device.process_queue(index, &mut ctx);
    }

    /// One of the device's own event sources fired.
    pub fn device_event(&mut self, token: u32, events: event_manager::EventSet) {
        if self.activated {
            let mut ctx = QueueContext {
                mem: &self.mem,
                queues: &mut self.queues,
                interrupt: &self.interrupt,
            };
            self.device.handle_event(token, events, Some(&mut ctx));
        } else {
            self.device.handle_event(token, events, None);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits may only be added (except by a reset).
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.device_features();
            let acceptable = self.acked_features & !offered == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            let queues_valid = self.queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem));
            if value & needed != needed || !queues_valid {
                self.status = value | STATUS_DEVICE_NEEDS_RESET;
                self.interrupt.trigger(INTERRUPT_CONFIG_CHANGE);
                return;
            }
            if let Err(error) = self.device.activate(self.acked_features) {
                crate::events::emit(
                    "device-error",
                    serde_json::json!({ "device_type": self.device.device_type(), "error": error.to_string() }),
                );
                self.status = value | STATUS_DEVICE_NEEDS_RESET;
                self.interrupt.trigger(INTERRUPT_CONFIG_CHANGE);
                return;
            }
            self.activated = true;
        }
        self.status = value;
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let queue_config = self.queue_config_allowed();
        let mut queue = |f: &mut dyn FnMut(&mut Queue)| {
            if queue_config {
                if let Some(q) = self.queues.get_mut(self.queue_select as usize) {
                    f(q);
                }
            }
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            // Features are fixed once FEATURES_OK is set.
            reg::DRIVER_FEATURES if self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) == 0 => {
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(value),
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(value) << 32),
                    _ => {}
                }
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => queue(&mut |q| q.set_size(value as u16)),
            reg::QUEUE_READY => queue(&mut |q| q.set_ready(value == 1)),
            reg::QUEUE_DESC_LOW => queue(&mut |q| q.set_desc_table_address(Some(value), None)),
            reg::QUEUE_DESC_HIGH => queue(&mut |q| q.set_desc_table_address(None, Some(value))),
            reg::QUEUE_DRIVER_LOW => queue(&mut |q| q.set_avail_ring_address(Some(value), None)),
            reg::QUEUE_DRIVER_HIGH => queue(&mut |q| q.set_avail_ring_address(None, Some(value))),
            reg::QUEUE_DEVICE_LOW => queue(&mut |q| q.set_used_ring_address(Some(value), None)),
            reg::QUEUE_DEVICE_HIGH => queue(&mut |q| q.set_used_ring_address(None, Some(value))),
            reg::QUEUE_NOTIFY => self.notify_queue(value as usize),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            _ => {}
        }
    }

    /// Guest read at `offset` of the slot.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    /// Guest write at `offset` of the slot.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & STATUS_DRIVER_OK == 0 || self.activated {
                self.device.write_config(offset - reg::CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
        } else if data.len() == 4 && offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        }
    }
}

/// The slot as a bus device (vCPU threads).
pub struct MmioSlot(pub Arc<Mutex<MmioTransport>>);

impl BusDevice for MmioSlot {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_devices::virtio::{ActivateError, TYPE_RNG};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Fake {
        activated: Arc<Mutex<Option<u64>>>,
        notified: Arc<Mutex<Vec<usize>>>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            TYPE_RNG
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn device_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError> {
            *self.activated.lock().unwrap() = Some(acked_features);
            Ok(())
        }
        fn reset(&mut self) {
            *self.activated.lock().unwrap() = None;
        }
        fn process_queue(&mut self, queue_index: usize, _ctx: &mut QueueContext<'_>) {
            self.notified.lock().unwrap().push(queue_index);
        }
        fn counters(&self) -> serde_json::Value {
            serde_json::json!({})
        }
    }

    struct Harness {
        transport: MmioTransport,
        activated: Arc<Mutex<Option<u64>>>,
        notified: Arc<Mutex<Vec<usize>>>,
    }

    fn harness() -> Harness {
        let activated = Arc::new(Mutex::new(None));
        let notified = Arc::new(Mutex::new(Vec::new()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let device = Fake {
            activated: activated.clone(),
            notified: notified.clone(),
        };
        Harness {
            transport: MmioTransport::new(Box::new(device), mem, interrupt),
            activated,
            notified,
        }
    }

    impl Harness {
        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }
        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }
        fn negotiate(&mut self, features_high: u32) {
            self.write(reg::STATUS, STATUS_ACKNOWLEDGE);
            self.write(reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            self.write(reg::DRIVER_FEATURES_SEL, 1);
            self.write(reg::DRIVER_FEATURES, features_high);
            self.write(reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        }
        fn setup_queue(&mut self) {
            self.write(reg::QUEUE_SEL, 0);
            self.write(reg::QUEUE_NUM, 16);
            self.write(reg::QUEUE_DESC_LOW, 0x1000);
            self.write(reg::QUEUE_DRIVER_LOW, 0x2000);
            self.write(reg::QUEUE_DEVICE_LOW, 0x3000);
            self.write(reg::QUEUE_READY, 1);
        }
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let mut h = harness();
        assert_eq!(h.read(reg::MAGIC), MAGIC_VALUE);
        assert_eq!(h.read(reg::VERSION), 2);
        assert_eq!(h.read(reg::DEVICE_ID), TYPE_RNG);
        h.write(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.read(reg::DEVICE_FEATURES), 1);
        h.write(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(h.read(reg::DEVICE_FEATURES), 1);
        assert_eq!(h.read(reg::QUEUE_NUM_MAX), 16);
        let mut config = [0u8; 2];
        h.transport.read(0x104, &mut config);
        assert_eq!(config, [5, 5]);
    }

    #[test]
    fn full_negotiation_activates_and_queue_notify_reaches_the_device() {
        let mut h = harness();
        h.negotiate(1);
        assert_ne!(h.read(reg::STATUS) & STATUS_FEATURES_OK, 0);
        h.setup_queue();
        h.write(
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(h.transport.is_activated());
        assert_eq!(*h.activated.lock().unwrap(), Some(VIRTIO_F_VERSION_1));
        h.write(reg::QUEUE_NOTIFY, 0);
        h.write(reg::QUEUE_NOTIFY, 7); // no such queue: ignored
        assert_eq!(h.notified.lock().unwrap().as_slice(), &[0]);
        h.write(reg::STATUS, 0);
        assert!(!h.transport.is_activated());
        assert_eq!(*h.activated.lock().unwrap(), None);
        assert_eq!(h.read(reg::QUEUE_READY), 0);
    }

    #[test]
    fn legacy_driver_without_version_1_is_refused() {
        let mut h = harness();
        h.negotiate(0);
        assert_eq!(h.read(reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let mut h = harness();
        h.negotiate(1 | 2);
        assert_eq!(h.read(reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_outside_memory_fails_driver_ok() {
        let mut h = harness();
        h.negotiate(1);
        h.setup_queue();
        h.write(reg::QUEUE_DESC_HIGH, 0x10); // far outside 1 MiB of RAM
        h.write(
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!h.transport.is_activated());
        assert_ne!(h.read(reg::STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        h.write(reg::QUEUE_NOTIFY, 0);
        assert!(h.notified.lock().unwrap().is_empty());
    }

    #[test]
    fn queue_cannot_be_reconfigured_while_running() {
        let mut h = harness();
        h.negotiate(1);
        h.setup_queue();
        h.write(
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        h.write(reg::QUEUE_DESC_LOW, 0xdead_0000);
        assert_eq!(h.transport.queues[0].desc_table(), 0x1000);
    }
}
