//! Network namespaces by name (`/run/netns/NAME`, where `ip netns` keeps them): run a thread or a child
//! process inside one, and scratch namespaces that are deleted when dropped.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

/// A named network namespace, held open by a file descriptor.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
    delete_on_drop: bool,
}

impl Netns {
    /// Opens the existing namespace `/run/netns/NAME`.
    pub fn open(name: &str) -> io::Result<Netns> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid namespace name"));
        }
        let file = File::open(format!("/run/netns/{name}"))?;
        Ok(Netns {
            name: name.to_string(),
            file,
            delete_on_drop: false,
        })
    }

    /// Creates the namespace NAME (`ip netns add`), which is deleted (`ip netns del`) when the returned
    /// value is dropped, along with every interface left in it.
    pub fn create(name: &str) -> io::Result<Netns> {
        let output = Command::new("ip")
            .args(["netns", "add", name])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let mut netns = Netns::open(name).inspect_err(|_| delete(name))?;
        netns.delete_on_drop = true;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command whose child process enters this namespace before it executes `program`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> io::Result<Command> {
        let fd: OwnedFd = self.file.try_clone()?.into();
        let mut command = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec; it only calls setns(2), which is
        // async-signal-safe, on a descriptor the closure owns (close-on-exec, so exec closes it), and
        // builds its error without allocating.
        unsafe {
            command.pre_exec(move || enter(fd.as_raw_fd()));
        }
        Ok(command)
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it opens live there), and
    /// returns its result. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || enter(fd).map(|()| f()));
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts a named thread that enters this namespace and runs `f` (for servers that outlive the call).
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<JoinHandle<io::Result<T>>> {
        let file = self.file.try_clone()?;
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || enter(file.as_raw_fd()).map(|()| f()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.delete_on_drop {
            delete(&self.name);
        }
    }
}

fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Moves the calling thread into the network namespace `fd` refers to.
fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) takes a descriptor number and a flag and touches no memory of ours; on failure it
    // returns -1 and we report errno.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
