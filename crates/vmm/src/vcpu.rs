//! vCPU threads: each runs `KVM_RUN` in a loop, routes port and MMIO exits to the buses,
//! turns guest shutdowns and crashes into exit reasons, and parks on pause.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::coalesced::CoalescedRing;
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, VmExit};
use crate::sandbox::{Filters, ThreadKind};

/// Signal used to kick a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; `KVM_RUN` then returns `EINTR` on a kick.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), ignore_kick)
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Run/pause state shared by the VMM and every vCPU thread.
#[derive(Default)]
pub struct VcpuControl {
    paused: Mutex<bool>,
    resumed: Condvar,
    parked: AtomicUsize,
}

impl VcpuControl {
    /// True while paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park_if_paused(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if *paused {
            self.parked.fetch_add(1, Ordering::SeqCst);
            while *paused {
                paused = self.resumed.wait(paused).unwrap_or_else(|e| e.into_inner());
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The running vCPU threads.
pub struct Vcpus {
    handles: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
    /// Held by every vCPU thread before its first `KVM_RUN` until [`Vcpus::release`].
    start: Arc<Barrier>,
}

impl Vcpus {
    /// Starts one named thread per vCPU.
    pub fn start(
        vcpus: Vec<VcpuFd>,
        io: Arc<Bus>,
        mmio: Arc<Bus>,
        coalesced: Option<Arc<CoalescedRing>>,
        filters: Option<Arc<Filters>>,
        exit: Arc<VmExit>,
    ) -> std::io::Result<Self> {
        let control = Arc::new(VcpuControl::default());
        let start = Arc::new(Barrier::new(vcpus.len() + 1));
        let mut handles = Vec::with_capacity(vcpus.len());
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let (io, mmio, exit, control) = (io.clone(), mmio.clone(), exit.clone(), control.clone());
            let (coalesced, filters, start) = (coalesced.clone(), filters.clone(), start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    if let Some(filters) = &filters {
                        if let Err(e) = filters.install(ThreadKind::Vcpu) {
                            exit.request(ExitReason::VmmError(format!("sandbox: vcpu{index}: {e}")));
                        }
                    }
                    start.wait();
                    run_vcpu(index, vcpu, &io, &mmio, coalesced.as_deref(), &exit, &control);
                    // Writes queued just before the end still reach the console.
                    if let Some(ring) = &coalesced {
                        ring.drain(&io, &mmio);
                    }
                })?;
            handles.push(handle);
        }
        Ok(Self {
            handles,
            control,
            start,
        })
    }

    /// Lets the vCPU threads enter the guest (each has installed its filter by then).
    pub fn release(&self) {
        self.start.wait();
    }

    /// Stops every vCPU at its next exit and waits (up to a second) until all are parked.
    pub fn pause(&self) -> Result<(), String> {
        *self.control.paused.lock().unwrap_or_else(|e| e.into_inner()) = true;
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.control.parked.load(Ordering::SeqCst) < self.handles.len() {
            if Instant::now() > deadline {
                return Err("vCPUs did not stop within 1 s".into());
            }
            for handle in &self.handles {
                // A thread that already ended cannot be kicked; that is fine.
                let _ = handle.kill(kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) {
        *self.control.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.control.resumed.notify_all();
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }
}

fn internal_error_detail(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the member of
    // the exit union that KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let count = (internal.ndata as usize).min(internal.data.len());
    let data: Vec<String> = internal.data[..count].iter().map(|d| format!("{d:#x}")).collect();
    format!(
        "KVM internal error, suberror {} data [{}]",
        internal.suberror,
        data.join(", ")
    )
}

/// `rip=… rsp=… cr2=…` for crash reports (best effort).
fn register_summary(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => format!(
            "rip={:#x} rsp={:#x} cr2={:#x} cr3={:#x}",
            regs.rip, regs.rsp, sregs.cr2, sregs.cr3
        ),
        _ => "unknown registers".into(),
    }
}

fn run_vcpu(
    index: usize,
    mut vcpu: VcpuFd,
    io: &Bus,
    mmio: &Bus,
    coalesced: Option<&CoalescedRing>,
    exit: &VmExit,
    control: &VcpuControl,
) {
    loop {
        control.park_if_paused();
        if exit.is_requested() {
            break;
        }
        let result = vcpu.run();
        // Writes KVM queued before this exit reach their device before the exit is handled.
        if let Some(ring) = coalesced {
            ring.drain(io, mmio);
        }
        match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                io.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                io.read(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {
                // Only reached without an in-kernel LAPIC; wait for a kick instead of spinning.
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(VcpuExit::Shutdown) => {
                let state = register_summary(&vcpu);
                exit.request(ExitReason::GuestCrash(format!(
                    "vcpu{index}: triple fault (shutdown) at {state}"
                )));
            }
            Ok(VcpuExit::InternalError) => {
                let detail = internal_error_detail(&mut vcpu);
                let state = register_summary(&vcpu);
                exit.request(ExitReason::GuestCrash(format!("vcpu{index}: {detail} at {state}")));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                exit.request(ExitReason::GuestCrash(format!(
                    "vcpu{index}: entry failed, hardware reason {reason:#x} on host cpu {cpu}"
                )));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => exit.request(ExitReason::GuestPowerOff),
                KVM_SYSTEM_EVENT_RESET => exit.request(ExitReason::GuestReboot),
                KVM_SYSTEM_EVENT_CRASH => {
                    exit.request(ExitReason::GuestCrash(format!("vcpu{index}: guest crash event")))
                }
                other => exit.request(ExitReason::VmmError(format!(
                    "vcpu{index}: unknown system event {other}"
                ))),
            },
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                exit.request(ExitReason::VmmError(format!("vcpu{index}: unexpected exit {other:?}")));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                exit.request(ExitReason::VmmError(format!("vcpu{index}: KVM_RUN failed: {e}")));
            }
        }
    }
}
