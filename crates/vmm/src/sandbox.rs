//! Confinement the VMM puts on itself once the VM is built, before the guest's first
//! instruction: every capability dropped, no core dumps, a bounded descriptor table,
//! `NO_NEW_PRIVS`, and a seccomp allowlist per thread kind — the event loop (devices, the
//! control socket) and the vCPU threads. Everything the VMM opens (kernel, disks, taps,
//! `/dev/kvm`, the control socket) is open by then; after it, a guest that takes over the
//! VMM can make only the system calls the VMM itself makes while running.
//!
//! A forbidden call raises SIGSYS; the handler writes the `vm-exit` event line
//! (`vmm-error`, naming the call and the thread) and ends the process with status 2.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// The kinds of thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop, the devices' back ends, the control socket.
    EventLoop,
    /// A vCPU thread: `KVM_RUN` and the exits it handles.
    Vcpu,
}

/// Why the sandbox could not be put in place (the VM then does not start).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A filter did not compile (a programming error).
    #[error("seccomp filter: {0}")]
    Filter(String),
    /// The kernel refused something.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Host { what, source }
}

/// The compiled filters, one per thread kind.
pub struct Filters {
    event_loop: BpfProgram,
    vcpu: BpfProgram,
}

impl Filters {
    /// Compiles both allowlists.
    pub fn compile() -> Result<Self, SandboxError> {
        Ok(Self {
            event_loop: compile(ThreadKind::EventLoop)?,
            vcpu: compile(ThreadKind::Vcpu)?,
        })
    }

    /// Installs the filter of `kind` on the calling thread (and so on every thread it starts
    /// later), with `NO_NEW_PRIVS`. A filter cannot be removed.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SandboxError> {
        let program = match kind {
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Vcpu => &self.vcpu,
        };
        THREAD_KIND.with(|k| k.set(Some(kind)));
        seccompiler::apply_filter(program).map_err(|e| SandboxError::Filter(e.to_string()))
    }
}

thread_local! {
    /// This thread's kind, for the SIGSYS report.
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// `_IOC(dir, 0xAE, nr, size)`: KVM's ioctl numbers.
const fn kvm_ioctl(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0xAE << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_READ: u64 = 2;
const KVM_RUN: u64 = kvm_ioctl(IOC_NONE, 0x80, 0);
const KVM_GET_REGS: u64 = kvm_ioctl(IOC_READ, 0x81, std::mem::size_of::<kvm_bindings::kvm_regs>() as u64);
const KVM_GET_SREGS: u64 = kvm_ioctl(IOC_READ, 0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>() as u64);

/// System calls every thread makes: memory, locks, time, signals, descriptors it already has.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
];

/// What the event loop adds: epoll, timers, the control socket, block and tap I/O,
/// `snapshot-disk` (a new file, `FICLONE` or a sparse copy), and at the end saving the
/// disks' dirty bitmaps and removing the control socket's path.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_ftruncate,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_openat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

fn compile(kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|&call| (call, Vec::new())).collect();
    // ioctl only with the requests each kind makes.
    let requests: &[u64] = match kind {
        ThreadKind::EventLoop => {
            rules.extend(EVENT_LOOP.iter().map(|&call| (call, Vec::new())));
            // Non-blocking control connections (std's set_nonblocking), snapshot-disk's reflink.
            &[libc::FIONBIO, libc::FICLONE]
        }
        // KVM_RUN, and the register reads of a crash report.
        ThreadKind::Vcpu => &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS],
    };
    let ioctl = requests
        .iter()
        .map(|&request| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SandboxError::Filter(e.to_string()))?;
    rules.insert(libc::SYS_ioctl, ioctl);
    if kind == ThreadKind::Vcpu {
        // F_GETFD only: std checks a descriptor is open when it closes one (debug builds),
        // as when a vCPU thread ends and drops its vCPU.
        let getfd = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::F_GETFD as u64)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| SandboxError::Filter(e.to_string()))?;
        rules.insert(libc::SYS_fcntl, vec![getfd]);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SandboxError::Filter(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Filter(e.to_string()))
}

/// When the VMM started, for the `uptime_ms` of a SIGSYS report.
static START: OnceLock<Instant> = OnceLock::new();

/// Installs the SIGSYS handler that reports a forbidden call and ends the VMM.
pub fn install_sigsys_handler(start: Instant) -> Result<(), SandboxError> {
    let _ = START.set(start);
    // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and mask, and
    // `sigaction` only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(host("sigaction(SIGSYS)")(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The exit status of a VMM error (see `ExitReason::VmmError`).
const STATUS_VMM_ERROR: i32 = 2;

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_call_addr (pointer) at 16, si_syscall (int) at 24.
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler.
    let syscall = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<i32>()) };
    let thread = match THREAD_KIND.with(|k| k.get()) {
        Some(ThreadKind::Vcpu) => "vcpu",
        Some(ThreadKind::EventLoop) => "event loop",
        None => "unknown",
    };
    let uptime_ms = START.get().map_or(0, |s| s.elapsed().as_millis() as u64);
    // Only stack memory and write(2) below: nothing that allocates or locks.
    let mut line = Line::default();
    line.push(b"{\"event\":\"vm-exit\",\"reason\":\"vmm-error\",\"detail\":\"seccomp: system call ");
    line.push_number(syscall as i64 as u64, syscall < 0);
    line.push(b" is not allowed on the ");
    line.push(thread.as_bytes());
    line.push(b" thread\",\"exit_status\":");
    line.push_number(STATUS_VMM_ERROR as u64, false);
    line.push(b",\"uptime_ms\":");
    line.push_number(uptime_ms, false);
    line.push(b"}\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(STATUS_VMM_ERROR);
    }
}

/// A fixed buffer for the SIGSYS report.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self { buf: [0; 256], len: 0 }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, value: u64, negative: bool) {
        let mut value = if negative { (value as i64).unsigned_abs() } else { value };
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (value % 10) as u8;
            n += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        if negative {
            self.push(b"-");
        }
        for i in (0..n).rev() {
            self.push(&digits[i..=i]);
        }
    }
}

/// Drops every capability from the calling thread (and the threads it starts later):
/// bounding set, ambient, effective, permitted and inheritable. Without the privilege to
/// drop the bounding set (not root), only what the thread holds is cleared.
pub fn drop_capabilities() -> Result<(), SandboxError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            // EINVAL: a capability this kernel does not know; EPERM: no CAP_SETPCAP.
            if !matches!(error.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) {
                return Err(host("prctl(PR_CAPBSET_DROP)")(error));
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if rc != 0 {
        return Err(host("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")(std::io::Error::last_os_error()));
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, both ours.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(host("capset")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Process limits: no core dumps (they would hold guest memory), no locked memory, and a
/// descriptor table only a little larger than what is open now.
pub fn set_rlimits() -> Result<(), SandboxError> {
    let open = std::fs::read_dir("/proc/self/fd")
        .map_err(host("read /proc/self/fd"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let limits = [
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_MEMLOCK, 0),
        (libc::RLIMIT_NOFILE, (open + 1 + 256).max(1024)),
    ];
    for (resource, value) in limits {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(host("setrlimit")(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile() {
        let filters = Filters::compile().unwrap();
        assert!(!filters.event_loop.is_empty());
        assert!(!filters.vcpu.is_empty());
    }

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn sigsys_report_numbers() {
        let mut line = Line::default();
        line.push_number(0, false);
        line.push(b" ");
        line.push_number(1234567, false);
        line.push(b" ");
        line.push_number(-5i64 as u64, true);
        assert_eq!(&line.buf[..line.len], b"0 1234567 -5");
    }

    /// In a child process: install the vCPU filter, make a call it forbids; the child must
    /// end by our SIGSYS handler with status 2 and the report on its stderr.
    #[test]
    fn a_forbidden_call_ends_the_process_with_a_report() {
        let mut pipe = [0i32; 2];
        // SAFETY: pipe fills the two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        let filters = Filters::compile().unwrap();
        // SAFETY: fork; the child only calls async-signal-safe functions and our filter
        // setup, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child: stderr to the pipe, then the filter and a forbidden call.
            unsafe {
                libc::dup2(pipe[1], 2);
                if install_sigsys_handler(Instant::now()).is_err() || filters.install(ThreadKind::Vcpu).is_err() {
                    libc::_exit(90);
                }
                // socket(2) is not on the vCPU list.
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::_exit(91);
            }
        }
        // SAFETY: closing our copy of the write end; reading the read end into our buffer.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut report = vec![0u8; 512];
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(pipe[0], report.as_mut_ptr().cast(), report.len()) };
        // SAFETY: our descriptor.
        unsafe { libc::close(pipe[0]) };
        report.truncate(n.max(0) as usize);
        let report = String::from_utf8_lossy(&report);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), STATUS_VMM_ERROR, "{report}");
        let event: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        assert_eq!(event["event"], "vm-exit");
        assert_eq!(event["reason"], "vmm-error");
        assert_eq!(
            event["detail"],
            format!(
                "seccomp: system call {} is not allowed on the vcpu thread",
                libc::SYS_socket
            )
        );
    }
}
