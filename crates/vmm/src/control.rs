//! The control socket: a Unix stream socket speaking one JSON request per line and one
//! JSON answer per line. Requests: `info`, `power-button`, `shutdown` (power button, then
//! forced off after `timeout_ms`), `pause`, `resume`, `kill`, `snapshot-disk` (a
//! point-in-time copy of a disk and its dirty chunks, resetting them) and `dirty-info` (the
//! dirty chunks). A bare word is accepted as `{"cmd": word}`.
//!
//! Requests are answered on the event-loop thread, which also runs every block request
//! (and the disk's own lock keeps out writes from anywhere else), so a `snapshot-disk` sees
//! the disk quiesced.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::Deserialize;
use serde_json::{json, Value};
use vmm_sys_util::timerfd::TimerFd;

use hearth_devices::dirty::{FreezeMode, CHUNK_BYTES};

use crate::exit::ExitReason;
use crate::vmm::{DiskSlot, SocketPath, VmShared};

const LISTENER_TOKEN: u32 = 0;
const TIMER_TOKEN: u32 = 1;
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Default grace period of `shutdown`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// A bound, not yet served, control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: SocketPath,
}

impl ControlServer {
    /// Binds `path` (mode 0600: only the VMM's user may control it).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let path = SocketPath(path.to_path_buf());
        std::fs::set_permissions(&path.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    /// The event-loop side, serving `shared`.
    pub fn into_handler(self, shared: Arc<VmShared>) -> std::io::Result<ControlHandler> {
        Ok(ControlHandler {
            listener: self.listener,
            _path: self.path,
            shared,
            connections: HashMap::new(),
            timer: TimerFd::new().map_err(std::io::Error::from)?,
            shutdown_timeout: None,
        })
    }
}

/// One request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    cmd: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// `snapshot-disk`, `dirty-info`: the disk's `id`, or its index in `disks` (a number or
    /// a string of digits).
    #[serde(default)]
    disk: Option<Value>,
    /// `snapshot-disk`: where the copy goes (an absolute path; replaced if it exists).
    #[serde(default)]
    out: Option<PathBuf>,
    /// `snapshot-disk`: `auto` (reflink, else copy; the default) or `copy`.
    #[serde(default)]
    method: Option<String>,
}

struct Connection {
    stream: UnixStream,
    buffer: Vec<u8>,
}

/// Serves the control socket from the event loop.
pub struct ControlHandler {
    listener: UnixListener,
    _path: SocketPath,
    shared: Arc<VmShared>,
    connections: HashMap<RawFd, Connection>,
    timer: TimerFd,
    shutdown_timeout: Option<u64>,
}

/// Answers one request line.
pub fn answer(shared: &VmShared, line: &str, shutdown: &mut dyn FnMut(u64) -> Result<(), String>) -> Value {
    let line = line.trim();
    let request = if line.starts_with('{') {
        match serde_json::from_str::<Request>(line) {
            Ok(request) => request,
            Err(e) => return json!({ "ok": false, "error": format!("bad request: {e}") }),
        }
    } else {
        Request {
            cmd: line.to_string(),
            timeout_ms: None,
            disk: None,
            out: None,
            method: None,
        }
    };
    match request.cmd.as_str() {
        "snapshot-disk" => return snapshot_disk(shared, &request),
        "dirty-info" => return dirty_info(shared, &request),
        _ => {}
    }
    let vcpus = shared.vcpus.lock().unwrap_or_else(|e| e.into_inner());
    match request.cmd.as_str() {
        "info" => info(shared, vcpus.as_ref().is_some_and(|v| v.is_paused())),
        "power-button" => {
            shared.power_button.press();
            json!({ "ok": true })
        }
        "shutdown" => {
            let timeout = request.timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
            shared.power_button.press();
            match shutdown(timeout) {
                Ok(()) => json!({ "ok": true, "timeout_ms": timeout }),
                Err(e) => json!({ "ok": false, "error": e }),
            }
        }
        "pause" => match vcpus.as_ref().map(|v| v.pause()) {
            Some(Ok(())) => json!({ "ok": true, "state": "paused" }),
            Some(Err(e)) => json!({ "ok": false, "error": e }),
            None => json!({ "ok": false, "error": "vCPUs not started" }),
        },
        "resume" => match vcpus.as_ref() {
            Some(v) => {
                v.resume();
                json!({ "ok": true, "state": "running" })
            }
            None => json!({ "ok": false, "error": "vCPUs not started" }),
        },
        "kill" => {
            shared
                .exit
                .request(ExitReason::Killed("kill requested on the control socket".into()));
            json!({ "ok": true })
        }
        other => json!({
            "ok": false,
            "error": format!(
                "unknown command {other:?}; known: info, power-button, shutdown, pause, resume, kill, \
                 snapshot-disk, dirty-info"
            )
        }),
    }
}

fn error(message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": message.into() })
}

/// The disk a request names: by `id` first, then by index.
fn find_disk<'a>(shared: &'a VmShared, request: &Request) -> Result<&'a DiskSlot, Value> {
    let Some(wanted) = &request.disk else {
        return Err(error(format!("{} needs \"disk\": a disk id or index", request.cmd)));
    };
    let by_id = |id: &str| shared.disks.iter().find(|d| d.id.as_deref() == Some(id));
    let by_index = |index: u64| usize::try_from(index).ok().and_then(|i| shared.disks.get(i));
    let found = match wanted {
        Value::String(text) => by_id(text).or_else(|| text.parse::<u64>().ok().and_then(by_index)),
        Value::Number(number) => number.as_u64().and_then(by_index),
        _ => None,
    };
    found.ok_or_else(|| {
        let known: Vec<String> = shared
            .disks
            .iter()
            .map(|d| match &d.id {
                Some(id) => format!("{} ({id})", d.index),
                None => d.index.to_string(),
            })
            .collect();
        error(format!(
            "unknown disk {wanted}; disks: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// `snapshot-disk`: with the disk's I/O held, fdatasync, a point-in-time copy at `out`
/// (reflink, else the dirty chunks into a sparse file), and a new snapshot point.
fn snapshot_disk(shared: &VmShared, request: &Request) -> Value {
    let disk = match find_disk(shared, request) {
        Ok(disk) => disk,
        Err(answer) => return answer,
    };
    let Some(out) = &request.out else {
        return error("snapshot-disk needs \"out\": the path of the copy");
    };
    if !out.is_absolute() {
        return error(format!("\"out\" must be an absolute path, got {}", out.display()));
    }
    let mode = match request.method.as_deref() {
        None | Some("auto") => FreezeMode::Auto,
        Some("copy") => FreezeMode::Copy,
        Some(other) => return error(format!("unknown method {other:?}; known: auto, copy")),
    };
    // The transport lock too: no vCPU thread runs the device (a trapped queue notify) meanwhile.
    let transport = shared
        .slots
        .get(disk.slot)
        .map(|slot| slot.transport.lock().unwrap_or_else(|e| e.into_inner()));
    let result = disk.handle.snapshot(out, mode);
    drop(transport);
    match result {
        Ok(snapshot) => json!({
            "ok": true,
            "size": snapshot.size,
            "chunk_bytes": CHUNK_BYTES,
            "chunks": disk.handle.chunks(),
            "dirty": snapshot.dirty,
            "method": snapshot.method.name(),
            "millis": snapshot.millis,
        }),
        Err(e) => error(format!("snapshot of disk {} to {}: {e}", disk.index, out.display())),
    }
}

/// `dirty-info`: the chunks written since the last snapshot point.
fn dirty_info(shared: &VmShared, request: &Request) -> Value {
    match find_disk(shared, request) {
        Ok(disk) => json!({
            "ok": true,
            "size": disk.handle.disk_bytes(),
            "chunk_bytes": CHUNK_BYTES,
            "chunks": disk.handle.chunks(),
            "dirty": disk.handle.dirty_runs(),
        }),
        Err(answer) => answer,
    }
}

fn info(shared: &VmShared, paused: bool) -> Value {
    let devices: Vec<Value> = shared
        .slots
        .iter()
        .map(|slot| {
            let transport = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
            json!({
                "slot": slot.slot,
                "type": slot.kind,
                "name": slot.name,
                "address": format!("{:#x}", crate::layout::virtio_slot_addr(slot.slot)),
                "irq": crate::layout::virtio_slot_irq(slot.slot),
                "activated": transport.is_activated(),
                "counters": transport.device().counters(),
            })
        })
        .collect();
    json!({
        "ok": true,
        "state": if paused { "paused" } else { "running" },
        "pid": std::process::id(),
        "vcpus": shared.config.vcpus,
        "memory_mib": shared.config.memory_mib,
        "uptime_ms": shared.start.elapsed().as_millis() as u64,
        "boot_time_us": shared.boot_timer.boot_time_us(),
        "power_button_presses": shared.power_button.presses(),
        "devices": devices,
    })
}

impl ControlHandler {
    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::with_data_raw(
                    fd,
                    fd as u32 + 2,
                    EventSet::IN | EventSet::READ_HANG_UP,
                ))
                .is_ok()
            {
                self.connections.insert(
                    fd,
                    Connection {
                        stream,
                        buffer: Vec::new(),
                    },
                );
            }
        }
    }

    fn serve(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(mut connection) = self.connections.remove(&fd) else {
            return;
        };
        let mut closed = false;
        let mut chunk = [0u8; 4096];
        loop {
            match connection.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => connection.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        while let Some(end) = connection.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = connection.buffer.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).to_string();
            let timer = &mut self.timer;
            let timeout_slot = &mut self.shutdown_timeout;
            let mut arm = |ms: u64| {
                *timeout_slot = Some(ms);
                timer
                    .reset(Duration::from_millis(ms.max(1)), None)
                    .map_err(|e| e.to_string())
            };
            let reply = answer(&self.shared, &text, &mut arm);
            // The VMM may exit right after a kill; best effort, blocking briefly.
            let _ = connection.stream.set_nonblocking(false);
            let _ = connection.stream.set_write_timeout(Some(Duration::from_millis(200)));
            if writeln!(connection.stream, "{reply}").is_err() {
                closed = true;
            }
            let _ = connection.stream.set_nonblocking(true);
        }
        if connection.buffer.len() > MAX_REQUEST_BYTES {
            closed = true;
        }
        if closed {
            let _ = ops.remove(Events::with_data_raw(
                fd,
                fd as u32 + 2,
                EventSet::IN | EventSet::READ_HANG_UP,
            ));
        } else {
            self.connections.insert(fd, connection);
        }
    }
}

impl MutEventSubscriber for ControlHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.listener, LISTENER_TOKEN, EventSet::IN));
        let _ = ops.add(Events::with_data_raw(self.timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            LISTENER_TOKEN => self.accept(ops),
            TIMER_TOKEN => {
                let _ = self.timer.wait();
                let timeout = self.shutdown_timeout.unwrap_or(0);
                self.shared.exit.request(ExitReason::Killed(format!(
                    "forced off: the guest did not answer the power button within {timeout} ms"
                )));
            }
            _ => self.serve(events.fd(), ops),
        }
    }
}
