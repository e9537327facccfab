//! Building and running one VM. `Vmm::build` is the boot recipe, in order: KVM VM →
//! guest RAM → kernel/initrd → platform and virtio devices → command line, zero page,
//! MP table, ACPI → vCPUs. `Vmm::run` starts the vCPUs and runs the event loop (queue
//! notifications, device fds, control socket, signals) until the VM ends.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use hearth_devices::crypt::{KeyError, XtsCipher};
use hearth_devices::virtio::block::{BlockHandle, BlockOptions};
use hearth_devices::virtio::{self, Interrupt, VirtioDevice};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::acpi::{self, AcpiLayout};
use crate::boot::{self, cpuid, mptable, regs};
use crate::coalesced::{CoalescedRing, DRAIN_INTERVAL};
use crate::config::{ConsoleConfig, VmConfig};
use crate::control::ControlServer;
use crate::devices::bus::Bus;
use crate::devices::console::ConsoleOut;
use crate::devices::legacy::{AcpiPowerRegisters, BootTimer, PowerButton, SerialConsole, I8042};
use crate::devices::mmio::{MmioSlot, MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::exit::{ExitReason, VmExit};
use crate::sandbox;
use crate::vcpu::Vcpus;
use crate::{events, layout, GuestMemoryMmap};

/// A build step that failed. `is_config_error` tells the caller whether the user's
/// configuration (a file, a tap, the command line) was at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `/dev/kvm` is missing or unusable.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Why.
        reason: String,
    },
    /// Loading the kernel/initrd or writing boot data failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU register setup failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// A disk could not be opened.
    #[error("disk {index} ({path}): {source}")]
    Disk {
        /// Position in `disks`.
        index: usize,
        /// File.
        path: String,
        /// Why.
        #[source]
        source: virtio::block::BlockError,
    },
    /// A disk's encryption key could not be used.
    #[error("disk {index}: encryption key {path}: {source}")]
    DiskKey {
        /// Position in `disks`.
        index: usize,
        /// Key file.
        path: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// A NIC's tap could not be opened.
    #[error("nic {index} (tap {tap}): {source}")]
    Net {
        /// Position in `nics`.
        index: usize,
        /// Tap name.
        tap: String,
        /// Why.
        #[source]
        source: virtio::net::NetError,
    },
    /// The console, a socket or another host resource failed.
    #[error("{what}: {source}")]
    Host {
        /// Which step.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// True when the user's configuration is at fault (exit status 1).
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            BuildError::Boot(_) | BuildError::Disk { .. } | BuildError::DiskKey { .. } | BuildError::Net { .. }
        )
    }
}

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

fn host_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Host { what, source }
}

/// One virtio device as the VMM keeps it.
pub struct VirtioSlot {
    /// Slot number (address and IRQ follow from it).
    pub slot: usize,
    /// `block`, `net` or `rng`.
    pub kind: &'static str,
    /// The disk's ID or the NIC's tap, for `info`.
    pub name: String,
    /// The transport, shared with the vCPU threads.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// One ioeventfd per queue.
    pub queue_events: Vec<EventFd>,
}

/// One disk as the control socket sees it.
pub struct DiskSlot {
    /// Position in `disks`.
    pub index: usize,
    /// Its virtio slot (the transport in `VmShared::slots`).
    pub slot: usize,
    /// The configured ID (`GET_ID`), if any.
    pub id: Option<String>,
    /// Dirty bitmap, snapshots, bitmap file.
    pub handle: BlockHandle,
}

/// State the control socket and the event loop share.
pub struct VmShared {
    /// VMM start time.
    pub start: Instant,
    /// The configuration the VM was built from.
    pub config: VmConfig,
    /// The exit latch.
    pub exit: Arc<VmExit>,
    /// The power button.
    pub power_button: Arc<PowerButton>,
    /// The boot timer.
    pub boot_timer: Arc<BootTimer>,
    /// Virtio devices in slot order.
    pub slots: Vec<Arc<VirtioSlot>>,
    /// The disks, in config order (their slots come first).
    pub disks: Vec<DiskSlot>,
    /// vCPU threads, once started.
    pub vcpus: Mutex<Option<Vcpus>>,
}

/// A built VM, ready to run.
pub struct Vmm {
    shared: Arc<VmShared>,
    vcpu_fds: Vec<VcpuFd>,
    /// COM1.
    serial: Arc<SerialConsole>,
    /// Where KVM queues the console's transmit writes, when it can.
    coalesced: Option<Arc<CoalescedRing>>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    control: Option<ControlServer>,
    // Guest RAM must stay mapped while KVM may run the vCPUs.
    _guest_memory: GuestMemoryMmap,
    // Keep the VM and KVM handles open for the VM's lifetime.
    _vm: VmFd,
    _kvm: Kvm,
}

fn open_console(console: &ConsoleConfig) -> Result<ConsoleOut, BuildError> {
    Ok(match console {
        ConsoleConfig::Stdout => {
            // SAFETY: dup(1) returns a new descriptor we own, or -1 (checked).
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(host_error("dup(stdout) for the console")(
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: `fd` is a fresh descriptor owned by nobody else.
            ConsoleOut::stream(Box::new(unsafe { File::from_raw_fd(fd) }))
        }
        ConsoleConfig::Off => ConsoleOut::stream(Box::new(std::io::sink())),
        ConsoleConfig::File(path) => {
            ConsoleOut::file(path).map_err(host_error(format!("console file {}", path.display())))?
        }
    })
}

fn derived_mac(tap: &str) -> [u8; 6] {
    // Locally administered, unicast, stable for a tap name (FNV-1a).
    let hash = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let b = hash.to_le_bytes();
    [0x06, 0x48, b[0], b[1], b[2], b[3]]
}

impl Vmm {
    /// Builds the VM described by `config` (already validated).
    pub fn build(config: VmConfig, start: Instant) -> Result<Vmm, BuildError> {
        // 1. KVM VM with in-kernel IOAPIC/LAPIC/PIT.
        let kvm = Kvm::new().map_err(kvm_error("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm_error("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_error("KVM_CREATE_PIT2"))?;

        // 2. Guest RAM, mapped lazily, one KVM slot per region.
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(config.memory_mib)
            .into_iter()
            .map(|(start, size)| (GuestAddress(start), size as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| BuildError::Memory {
            mib: config.memory_mib,
            reason: e.to_string(),
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| BuildError::Memory {
                    mib: config.memory_mib,
                    reason: e.to_string(),
                })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which `Vmm` keeps (field
            // `_guest_memory`) for as long as the VM exists.
            unsafe { vm.set_user_memory_region(region) }.map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // 3. Kernel and initrd.
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, kernel.end)?),
            None => None,
        };

        // 4. Platform devices.
        let exit = Arc::new(VmExit::new().map_err(host_error("exit eventfd"))?);
        let irqfd = |gsi: u32| -> Result<EventFd, BuildError> {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(host_error("irqfd"))?;
            vm.register_irqfd(&fd, gsi).map_err(kvm_error("KVM_IRQFD"))?;
            Ok(fd)
        };
        let mut io_bus = Bus::default();
        let mut mmio_bus = Bus::default();
        let console = open_console(&config.console)?;
        let serial = Arc::new(SerialConsole::new(irqfd(layout::COM1_IRQ)?, console));
        io_bus.insert(u64::from(layout::COM1_PORT), 8, serial.clone());
        io_bus.insert(
            u64::from(layout::I8042_DATA_PORT),
            5,
            Arc::new(I8042::new(exit.clone())),
        );
        io_bus.insert(
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            3,
            Arc::new(AcpiPowerRegisters::new(exit.clone())),
        );
        let power_button = Arc::new(PowerButton::new(irqfd(layout::GED_IRQ)?));
        mmio_bus.insert(layout::GED_ADDR, layout::GED_SIZE, power_button.clone());
        let boot_timer = Arc::new(BootTimer::new(start));
        mmio_bus.insert(layout::BOOT_TIMER_ADDR, 1, boot_timer.clone());

        // Virtio devices: disks, then NICs, then rng.
        let mut devices: Vec<(&'static str, String, Box<dyn VirtioDevice>)> = Vec::new();
        let mut disks = Vec::new();
        for (index, disk) in config.disks.iter().enumerate() {
            let cipher = match &disk.encryption {
                Some(encryption) => {
                    Some(
                        XtsCipher::from_key_file(&encryption.key_file).map_err(|source| BuildError::DiskKey {
                            index,
                            path: encryption.key_file.display().to_string(),
                            source,
                        })?,
                    )
                }
                None => None,
            };
            let options = BlockOptions {
                read_only: disk.read_only,
                id: disk.id.clone(),
                rate_limit: disk.rate_limit.clone(),
                cipher,
                dirty_bitmap: disk.dirty_bitmap.clone(),
            };
            let block = virtio::block::Block::with_options(&disk.path, options).map_err(|source| BuildError::Disk {
                index,
                path: disk.path.display().to_string(),
                source,
            })?;
            disks.push(DiskSlot {
                index,
                slot: devices.len(),
                id: disk.id.clone(),
                handle: block.handle(),
            });
            let name = disk.id.clone().unwrap_or_else(|| disk.path.display().to_string());
            devices.push(("block", name, Box::new(block)));
        }
        for (index, nic) in config.nics.iter().enumerate() {
            let mac = nic
                .mac
                .as_deref()
                .and_then(crate::config::parse_mac)
                .unwrap_or_else(|| derived_mac(&nic.tap));
            let net =
                virtio::net::Net::new(&nic.tap, mac, nic.rate_limit.clone()).map_err(|source| BuildError::Net {
                    index,
                    tap: nic.tap.clone(),
                    source,
                })?;
            devices.push(("net", nic.tap.clone(), Box::new(net)));
        }
        if config.rng {
            devices.push(("rng", "rng".into(), Box::new(virtio::rng::Rng::new())));
        }
        let mut slots = Vec::new();
        for (slot, (kind, name, device)) in devices.into_iter().enumerate() {
            let addr = layout::virtio_slot_addr(slot);
            let interrupt = Arc::new(Interrupt::new(irqfd(layout::virtio_slot_irq(slot))?));
            let transport = MmioTransport::new(device, mem.clone(), interrupt);
            let mut queue_events = Vec::new();
            for queue in 0..transport.queue_count() {
                let event = EventFd::new(libc::EFD_NONBLOCK).map_err(host_error("ioeventfd"))?;
                vm.register_ioevent(&event, &IoEventAddress::Mmio(addr + QUEUE_NOTIFY_OFFSET), queue as u32)
                    .map_err(kvm_error("KVM_IOEVENTFD"))?;
                queue_events.push(event);
            }
            let transport = Arc::new(Mutex::new(transport));
            mmio_bus.insert(addr, layout::VIRTIO_MMIO_SIZE, Arc::new(MmioSlot(transport.clone())));
            slots.push(Arc::new(VirtioSlot {
                slot,
                kind,
                name,
                transport,
                queue_events,
            }));
        }

        // 5. Command line, zero page, MP table, ACPI.
        let cmdline = boot::build_cmdline(&config.cmdline, slots.len())?;
        boot::write_boot_params(&mem, &kernel, &cmdline, initrd)?;
        boot::write_bytes(&mem, layout::EBDA_START, &mptable::build(config.vcpus))?;
        let tables = acpi::build(AcpiLayout {
            vcpus: config.vcpus,
            virtio_slots: slots.len(),
        });
        for table in &tables {
            boot::write_bytes(&mem, table.address, &table.bytes)?;
        }
        if let Some(dir) = &config.dump_acpi {
            std::fs::create_dir_all(dir).map_err(host_error(format!("create {}", dir.display())))?;
            for table in &tables {
                let path = dir.join(format!("{}.dat", table.signature));
                std::fs::write(&path, &table.bytes).map_err(host_error(format!("write {}", path.display())))?;
            }
        }

        // 6. vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpu_fds = Vec::new();
        for index in 0..config.vcpus {
            let vcpu = vm.create_vcpu(u64::from(index)).map_err(kvm_error("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::normalize(&mut cpuid, index, config.vcpus);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_error("KVM_SET_CPUID2"))?;
            regs::setup_msrs(&vcpu)?;
            if index == 0 {
                regs::setup_regs(&vcpu, kernel.entry.0)?;
                regs::setup_fpu(&vcpu)?;
                regs::setup_sregs(&mem, &vcpu)?;
            }
            regs::setup_lapic(&vcpu)?;
            vcpu_fds.push(vcpu);
        }
        let coalesced = coalesce_console_writes(&kvm, &vm, &vcpu_fds[0]);

        // 7. Control socket last, so that a failed build leaves no socket behind.
        let control = match &config.control_socket {
            Some(path) => {
                Some(ControlServer::bind(path).map_err(host_error(format!("control socket {}", path.display())))?)
            }
            None => None,
        };

        let shared = Arc::new(VmShared {
            start,
            config,
            exit,
            power_button,
            boot_timer,
            slots,
            disks,
            vcpus: Mutex::new(None),
        });
        Ok(Vmm {
            shared,
            vcpu_fds,
            serial,
            coalesced,
            io_bus: Arc::new(io_bus),
            mmio_bus: Arc::new(mmio_bus),
            control,
            _guest_memory: mem,
            _vm: vm,
            _kvm: kvm,
        })
    }

    /// Runs the VM until it ends and returns why. Disks' bitmap files are removed before
    /// the guest runs and written back when the VM has ended (whatever the reason), so
    /// only a VMM that dies abruptly leaves none.
    pub fn run(mut self) -> ExitReason {
        let reason = match self.claim_bitmap_files() {
            Ok(()) => self.run_loop(),
            Err(reason) => reason,
        };
        self.finish_disks();
        // The console's last words: writes still queued in KVM's ring, a partial line.
        if let Some(ring) = &self.coalesced {
            ring.drain(&self.io_bus, &self.mmio_bus);
        }
        self.serial.flush_output();
        reason
    }

    /// Removes each disk's bitmap file (it was loaded when the disk was built), reporting
    /// where each bitmap came from in a `dirty-bitmap` event.
    fn claim_bitmap_files(&self) -> Result<(), ExitReason> {
        for disk in &self.shared.disks {
            let Some(file) = disk.handle.bitmap_file() else {
                continue;
            };
            let start = disk.handle.dirty_start();
            let detail = match start {
                virtio::block::DirtyStart::Invalid(why) => why.as_str(),
                _ => "",
            };
            events::emit(
                "dirty-bitmap",
                serde_json::json!({
                    "disk": disk.index,
                    "file": file.display().to_string(),
                    "start": start.name(),
                    "detail": detail,
                    "chunks": disk.handle.chunks(),
                    "dirty_chunks": disk.handle.dirty_chunks(),
                }),
            );
            disk.handle.claim_bitmap_file().map_err(|e| {
                ExitReason::VmmError(format!(
                    "disk {}: remove dirty bitmap {}: {e}",
                    disk.index,
                    file.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Stops the disks' writes and saves their bitmap files.
    fn finish_disks(&self) {
        for disk in &self.shared.disks {
            if let Err(e) = disk.handle.finish() {
                events::emit(
                    "vmm-warning",
                    serde_json::json!({ "error": format!("disk {}: save dirty bitmap: {e}", disk.index) }),
                );
            }
        }
    }

    fn run_loop(&mut self) -> ExitReason {
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> = match EventManager::new() {
            Ok(manager) => manager,
            Err(e) => return ExitReason::VmmError(format!("event manager: {e:?}")),
        };
        for slot in &self.shared.slots {
            manager.add_subscriber(Arc::new(Mutex::new(VirtioHandler {
                slot: slot.clone(),
                sources: Vec::new(),
            })));
        }
        manager.add_subscriber(Arc::new(Mutex::new(ExitHandler(self.shared.exit.clone()))));
        match SignalHandler::new(self.shared.exit.clone()) {
            Ok(handler) => {
                manager.add_subscriber(Arc::new(Mutex::new(handler)));
            }
            Err(e) => return ExitReason::VmmError(format!("signalfd: {e}")),
        }
        if let Some(control) = self.control.take() {
            match control.into_handler(self.shared.clone()) {
                Ok(handler) => {
                    manager.add_subscriber(Arc::new(Mutex::new(handler)));
                }
                Err(e) => return ExitReason::VmmError(format!("control socket: {e}")),
            }
        }
        match ConsoleTimer::new(
            self.serial.clone(),
            self.coalesced.clone(),
            self.io_bus.clone(),
            self.mmio_bus.clone(),
        ) {
            Ok(handler) => {
                manager.add_subscriber(Arc::new(Mutex::new(handler)));
            }
            Err(e) => return ExitReason::VmmError(format!("console timer: {e}")),
        }
        if let Err(e) = crate::vcpu::install_kick_handler() {
            return ExitReason::VmmError(format!("vCPU kick signal handler: {e}"));
        }
        // Confinement: everything the VM needs is open; from here on the VMM makes only the
        // system calls on its allowlists (sandbox.rs). Capabilities and limits first (vCPU
        // threads inherit them), then each vCPU thread installs its filter and waits until
        // this thread has installed its own: no guest instruction runs before all are in.
        let filters = if self.shared.config.seccomp {
            let prepared = sandbox::Filters::compile().and_then(|filters| {
                sandbox::set_rlimits()?;
                sandbox::drop_capabilities()?;
                sandbox::install_sigsys_handler(self.shared.start)?;
                Ok(Arc::new(filters))
            });
            match prepared {
                Ok(filters) => Some(filters),
                Err(e) => return ExitReason::VmmError(format!("sandbox: {e}")),
            }
        } else {
            None
        };
        let vcpu_fds = std::mem::take(&mut self.vcpu_fds);
        let vcpus = match Vcpus::start(
            vcpu_fds,
            self.io_bus.clone(),
            self.mmio_bus.clone(),
            self.coalesced.clone(),
            filters.clone(),
            self.shared.exit.clone(),
        ) {
            Ok(vcpus) => vcpus,
            Err(e) => return ExitReason::VmmError(format!("start vCPU threads: {e}")),
        };
        if let Some(filters) = &filters {
            if let Err(e) = filters.install(sandbox::ThreadKind::EventLoop) {
                self.shared
                    .exit
                    .request(ExitReason::VmmError(format!("sandbox: event loop: {e}")));
            }
        }
        vcpus.release();
        *self.shared.vcpus.lock().unwrap_or_else(|e| e.into_inner()) = Some(vcpus);
        events::emit(
            "vm-started",
            serde_json::json!({
                "pid": std::process::id(),
                "vcpus": self.shared.config.vcpus,
                "memory_mib": self.shared.config.memory_mib,
                "devices": self.shared.slots.iter().map(|s| s.kind).collect::<Vec<_>>(),
                "startup_us": self.shared.start.elapsed().as_micros() as u64,
            }),
        );
        while !self.shared.exit.is_requested() {
            if let Err(e) = manager.run() {
                self.shared
                    .exit
                    .request(ExitReason::VmmError(format!("event loop: {e:?}")));
            }
        }
        self.shared
            .exit
            .reason()
            .unwrap_or_else(|| ExitReason::VmmError("exit without a reason".into()))
    }

    /// The shared state (for tests and the control socket).
    pub fn shared(&self) -> &Arc<VmShared> {
        &self.shared
    }
}

/// Dispatches a virtio slot's queue ioeventfds and device fds.
struct VirtioHandler {
    slot: Arc<VirtioSlot>,
    sources: Vec<u32>,
}

/// Tokens at or above this are device event sources; below are queue indexes.
const DEVICE_TOKEN_BASE: u32 = 1 << 16;

impl MutEventSubscriber for VirtioHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.slot.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                events::emit(
                    "vmm-warning",
                    serde_json::json!({ "error": format!("watch queue {index}: {e:?}") }),
                );
            }
        }
        let sources = self
            .slot
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device()
            .event_sources();
        for source in sources {
            let data = DEVICE_TOKEN_BASE + source.token;
            if let Err(e) = ops.add(Events::with_data_raw(source.fd, data, source.events)) {
                events::emit(
                    "vmm-warning",
                    serde_json::json!({ "error": format!("watch device fd: {e:?}") }),
                );
            }
            self.sources.push(data);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        let mut transport = self.slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        if data < DEVICE_TOKEN_BASE {
            if let Some(event) = self.slot.queue_events.get(data as usize) {
                let _ = event.read();
            }
            transport.notify_queue(data as usize);
        } else {
            transport.device_event(data - DEVICE_TOKEN_BASE, events.event_set());
        }
    }
}

/// Wakes the loop when an exit is requested.
struct ExitHandler(Arc<VmExit>);

impl MutEventSubscriber for ExitHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.event(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }
}

/// SIGTERM, SIGINT and SIGHUP (blocked in every thread by `block_exit_signals`) end the
/// VM as killed.
struct SignalHandler {
    fd: File,
    exit: Arc<VmExit>,
}

const EXIT_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn exit_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in EXIT_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the exit signals in the calling thread (call before any thread starts, so that
/// every thread inherits the mask and only the signalfd sees them).
pub fn block_exit_signals() {
    let set = exit_signal_set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

impl SignalHandler {
    fn new(exit: Arc<VmExit>) -> std::io::Result<Self> {
        let set = exit_signal_set();
        // SAFETY: `set` is initialised; -1 asks for a new descriptor, checked below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd, exit })
    }
}

impl MutEventSubscriber for SignalHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data_raw(self.fd.as_raw_fd(), 0, EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        if let Ok(n) = std::io::Read::read(&mut self.fd, &mut info) {
            if n == info.len() {
                let signal = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
                let name = match signal {
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGINT => "SIGINT",
                    libc::SIGHUP => "SIGHUP",
                    _ => "signal",
                };
                self.exit.request(ExitReason::Killed(format!("{name} received")));
            }
        }
    }
}

/// Queues the guest's writes to the console's transmit register in KVM's coalesced ring
/// (see [`crate::coalesced`]) when this KVM can (`KVM_CAP_COALESCED_PIO`); `None` otherwise,
/// and every write then exits as before.
fn coalesce_console_writes(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd) -> Option<Arc<CoalescedRing>> {
    if !kvm.check_extension(Cap::CoalescedMmio) || !kvm.check_extension(Cap::CoalescedPio) {
        return None;
    }
    let ring = CoalescedRing::map(vcpu).ok()?;
    vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(layout::COM1_PORT)), 1)
        .ok()?;
    Some(Arc::new(ring))
}

/// Every [`DRAIN_INTERVAL`]: empties the coalesced ring (writes no exit followed) and writes
/// out the partial line the console holds.
struct ConsoleTimer {
    timer: TimerFd,
    serial: Arc<SerialConsole>,
    ring: Option<Arc<CoalescedRing>>,
    io: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl ConsoleTimer {
    fn new(
        serial: Arc<SerialConsole>,
        ring: Option<Arc<CoalescedRing>>,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
    ) -> std::io::Result<Self> {
        let mut timer = TimerFd::new().map_err(std::io::Error::from)?;
        timer
            .reset(DRAIN_INTERVAL, Some(DRAIN_INTERVAL))
            .map_err(std::io::Error::from)?;
        Ok(Self {
            timer,
            serial,
            ring,
            io,
            mmio,
        })
    }
}

impl MutEventSubscriber for ConsoleTimer {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        if let Some(ring) = &self.ring {
            ring.drain(&self.io, &self.mmio);
        }
        self.serial.flush_output();
    }
}

/// Path of the control socket, removed when dropped.
#[derive(Debug)]
pub struct SocketPath(pub PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
