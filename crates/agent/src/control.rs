//! Client of hearth-vmm's control socket: one JSON request line, one JSON answer line.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// File name of the control socket in the run directory.
pub const SOCKET_FILE: &str = "vmm.sock";

/// Longest path `connect(2)` takes in `sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A path to connect to `socket` by: itself when short enough, else through
/// `/proc/self/fd/<dir fd>/` (the returned file keeps that descriptor open).
fn connectable(socket: &Path) -> io::Result<(PathBuf, Option<std::fs::File>)> {
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((socket.to_path_buf(), None));
    }
    let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path has no parent"));
    };
    let dir = std::fs::File::open(parent)?;
    let short = Path::new(&format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir))).join(name);
    Ok((short, Some(dir)))
}

fn parse_answer(line: &str) -> io::Result<Value> {
    let value: Value = serde_json::from_str(line.trim())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer {line:?}: {e}")))?;
    if value["ok"] == true {
        Ok(value)
    } else {
        Err(io::Error::other(format!("hearth-vmm refused: {}", value["error"])))
    }
}

/// Sends `request` (a bare command word or a JSON object) and returns the answer, which
/// must say `"ok": true`; blocking, each step bounded by `timeout`.
pub fn request_blocking(socket: &Path, request: &str, timeout: Duration) -> io::Result<Value> {
    let (path, _dir) = connectable(socket)?;
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    parse_answer(&line)
}

/// `request_blocking` for async callers: the whole exchange is bounded by `timeout`.
pub async fn request(socket: &Path, request: &str, timeout: Duration) -> io::Result<Value> {
    let exchange = async {
        let (path, _dir) = connectable(socket)?;
        let mut stream = tokio::net::UnixStream::connect(path).await?;
        stream.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut line).await?;
        parse_answer(&line)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from hearth-vmm"))?
}

/// The `shutdown` request: power button, forced off by the VMM after `timeout`.
pub fn shutdown_request(timeout: Duration) -> String {
    serde_json::json!({ "cmd": "shutdown", "timeout_ms": timeout.as_millis() as u64 }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_socket_paths_go_through_the_directory_descriptor() {
        let base = std::env::temp_dir().join(format!("hearth-agent-ctl-{}", std::process::id()));
        let deep = base.join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let socket = deep.join(SOCKET_FILE);
        assert!(socket.as_os_str().len() > MAX_SOCKET_PATH);
        let listener = std::os::unix::net::UnixListener::bind({
            let (short, _dir) = connectable(&socket).unwrap();
            short
        });
        // Binding through /proc/self/fd works too; if it does not on this kernel, the
        // test has nothing to show.
        let Ok(listener) = listener else {
            std::fs::remove_dir_all(&base).unwrap();
            return;
        };
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert_eq!(line, "info\n");
            (&stream).write_all(b"{\"ok\":true,\"state\":\"running\"}\n").unwrap();
        });
        let answer = request_blocking(&socket, "info", Duration::from_secs(5)).unwrap();
        assert_eq!(answer["state"], "running");
        server.join().unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_refusal_is_an_error() {
        let error = parse_answer(r#"{"ok":false,"error":"unknown command"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown command"), "{error}");
        assert_eq!(
            shutdown_request(Duration::from_millis(1500)),
            r#"{"cmd":"shutdown","timeout_ms":1500}"#
        );
    }
}
