//! Test support: an S3-compatible server (moto, from PyPI) on a loopback port, for the
//! image and snapshot stores' S3 tests.
//!
//! moto is installed by `scripts/test` (`hearth_moto_server` in scripts/lib.sh) into
//! `~/.cache/hearth/venv`. [`Moto::start`] looks for `moto_server` in `$HEARTH_MOTO_SERVER`,
//! that venv, then `PATH`; without it, it says so and answers `None` (the test passes),
//! unless `CI=true`, where it panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install moto by hand.
pub const INSTALL: &str = "python3 -m venv ~/.cache/hearth/venv && ~/.cache/hearth/venv/bin/pip install 'moto[server]'";

/// Where `moto_server` is.
pub fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEARTH_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hearth/venv/bin/moto_server"));
    if let Some(venv) = venv.filter(|p| p.is_file()) {
        return Some(venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
}

/// A moto server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts a server (see the module docs for when it answers `None`).
    pub fn start() -> Option<Moto> {
        let Some(program) = moto_server() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("moto_server is missing (CI=true): install it with `{INSTALL}`");
            }
            eprintln!("SKIPPED: moto_server not found; install it with `{INSTALL}` to run the S3 test");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while moto.request("GET", "/", b"").is_none() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(moto)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain HTTP/1.1 request (moto does not check signatures): status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).ok()?;
        stream.write_all(body).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body_at = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some((status, response[body_at..].to_vec()))
    }

    /// PUT `path` (e.g. `/bucket` creates a bucket), asserting 200.
    pub fn put(&self, path: &str, body: &[u8]) {
        let (status, text) = self.request("PUT", path, body).expect("moto answers");
        assert_eq!(status, 200, "PUT {path}: {}", String::from_utf8_lossy(&text));
    }

    /// GET `path`, asserting 200.
    pub fn get(&self, path: &str) -> String {
        let (status, text) = self.request("GET", path, b"").expect("moto answers");
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&text));
        String::from_utf8(text).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
