//! The TCP side: a listener bound to one bridge, one task per connection, one request per connection.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::http::{parse_request, HttpError, Request, Response};
use super::{respond, Imds};
use crate::throttle::KeyedBuckets;

/// Client addresses whose request rate one listener tracks (idle ones are forgotten beyond).
const MAX_RATE_CLIENTS: usize = 4096;

/// Bytes read and discarded after the response, waiting for the client to close, so that the close
/// is a FIN and not a reset (which could destroy the response in flight).
const MAX_DRAIN: usize = 64 * 1024;

/// Limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsLimits {
    /// Time for the whole request to arrive, and then for the response to leave; a connection that
    /// takes longer is closed without an answer. Default 5 s.
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's backlog. Default 64.
    pub max_connections: usize,
    /// Connections of one client address at once; further ones are closed as soon as accepted.
    /// Default 8.
    pub max_connections_per_client: usize,
    /// Requests per second of one client address (a token bucket refilled at this rate, checked
    /// when a connection is accepted); beyond it the request is answered `429 Too Many Requests`,
    /// as EC2 throttles IMDS per instance. Default 100; 0: no limit.
    pub requests_per_sec_per_client: u32,
    /// The bucket's size: requests one client may make at once after being idle. Default 200.
    pub request_burst_per_client: u32,
}

impl Default for ImdsLimits {
    fn default() -> Self {
        ImdsLimits {
            request_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_connections_per_client: 8,
            requests_per_sec_per_client: 100,
            request_burst_per_client: 200,
        }
    }
}

/// A listener serving IMDS on one device; it stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct ImdsListener {
    device: String,
    local_addr: SocketAddrV4,
    task: Option<JoinHandle<()>>,
}

impl ImdsListener {
    /// The device the listener is bound to.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The address and port it listens on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// Stops serving and waits until the listening socket and every connection are closed.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ImdsListener {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Imds {
    /// Serves IMDS to the instances of `device` on `addr:port` ([`super::IMDS_ADDR`],
    /// [`super::IMDS_PORT`]) with the default [`ImdsLimits`]. The socket is bound to `device`
    /// (`SO_BINDTODEVICE`) in the calling thread's network namespace; `addr` must be an address of the
    /// namespace. Call it inside a Tokio runtime, which runs the server until the returned listener is
    /// dropped.
    pub fn listen(self: &Arc<Self>, device: &str, addr: Ipv4Addr, port: u16) -> io::Result<ImdsListener> {
        self.listen_with_limits(device, addr, port, ImdsLimits::default())
    }

    /// [`Imds::listen`] with other limits.
    pub fn listen_with_limits(
        self: &Arc<Self>,
        device: &str,
        addr: Ipv4Addr,
        port: u16,
        limits: ImdsLimits,
    ) -> io::Result<ImdsListener> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("Imds::listen must be called inside a Tokio runtime"))?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(bound_listener(device, addr, port)?)?
        };
        let local_addr = match listener.local_addr()? {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!("an AF_INET socket"),
        };
        let task = runtime.spawn(accept_loop(self.clone(), device.to_string(), listener, limits));
        Ok(ImdsListener {
            device: device.to_string(),
            local_addr,
            task: Some(task),
        })
    }
}

/// A listening TCP socket on `addr:port`, bound to `device`, non-blocking.
fn bound_listener(device: &str, addr: Ipv4Addr, port: u16) -> io::Result<std::net::TcpListener> {
    if device.is_empty() || device.len() >= libc::IFNAMSIZ || device.contains(['\0', '/']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid device name {device:?}"),
        ));
    }
    let context = |what: &str| {
        let error = io::Error::last_os_error();
        io::Error::new(
            error.kind(),
            format!("IMDS on {device} ({addr}:{port}): {what}: {error}"),
        )
    };
    // SAFETY: plain socket(2) call; the descriptor is checked and then owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(context("socket"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|_| context("SO_REUSEADDR"))?;
    // SAFETY: the option value is `device`'s bytes, valid for the length passed (the kernel copies at
    // most IFNAMSIZ bytes and does not need a terminating NUL when given the length).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(context("SO_BINDTODEVICE"));
    }
    let sockaddr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr` is a valid sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sockaddr as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(context("bind"));
    }
    // SAFETY: listen(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(context("listen"));
    }
    Ok(std::net::TcpListener::from(fd))
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int on our stack, valid for the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Open connections per client address of one listener.
type ClientCounts = Arc<Mutex<HashMap<Ipv4Addr, usize>>>;

/// Counts one connection of a client while it lives.
struct ClientSlot {
    counts: ClientCounts,
    client: Ipv4Addr,
}

impl ClientSlot {
    fn take(counts: &ClientCounts, client: Ipv4Addr, max: usize) -> Option<ClientSlot> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: counts.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Accepts connections until aborted; dropping it (abort) drops the connections' tasks too.
async fn accept_loop(imds: Arc<Imds>, device: String, listener: TcpListener, limits: ImdsLimits) {
    let device: Arc<str> = device.into();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = ClientCounts::default();
    let mut rates = (limits.requests_per_sec_per_client > 0).then(|| {
        KeyedBuckets::new(
            limits.requests_per_sec_per_client,
            limits.request_burst_per_client.max(1),
            MAX_RATE_CLIENTS,
        )
    });
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or memory, or a connection aborted before accept: try again soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else {
            continue;
        };
        let Some(slot) = ClientSlot::take(&clients, *peer.ip(), limits.max_connections_per_client) else {
            continue;
        };
        // Checked after the connection cap: a connection closed unanswered costs no token.
        let throttled = rates
            .as_mut()
            .is_some_and(|rates| !rates.try_take(peer.ip(), std::time::Instant::now()));
        let (imds, device, timeout) = (imds.clone(), device.clone(), limits.request_timeout);
        connections.spawn(async move {
            serve(&imds, &device, stream, *peer.ip(), timeout, throttled).await;
            drop((permit, slot));
        });
    }
}

/// Why no request was read.
enum ReadError {
    /// The client closed, or the connection failed: nothing to answer.
    Gone,
    /// The request is bad: answer with its status.
    Http(HttpError),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Gone
    }
}

impl From<HttpError> for ReadError {
    fn from(error: HttpError) -> Self {
        ReadError::Http(error)
    }
}

/// Reads one request head, then its body (discarded).
async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some((request, head_len)) = parse_request(&buf)? {
            let body = request.content_length()?;
            while buf.len() < head_len + body {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ReadError::Gone);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(request);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves one connection: one request, one response (`429` when `throttled`), close.
async fn serve(imds: &Imds, device: &str, mut stream: TcpStream, peer: Ipv4Addr, timeout: Duration, throttled: bool) {
    let (mut response, head_only) = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
        Err(_) | Ok(Err(ReadError::Gone)) => return,
        Ok(Err(ReadError::Http(error))) => (Response::error(error.status()), false),
        Ok(Ok(request)) if throttled => (Response::error(429), request.method == "HEAD"),
        Ok(Ok(request)) => (respond(imds, device, peer, &request), request.method == "HEAD"),
    };
    if let Some(ttl) = response.ip_ttl {
        // A token must not travel further than the hop limit: without the TTL, no token.
        if set_int_option(stream.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TTL, ttl.into()).is_err() {
            response = Response::error(500);
        }
    }
    let bytes = response.encode(head_only);
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        let mut drained = 0;
        let mut chunk = [0u8; 2048];
        while drained < MAX_DRAIN {
            match stream.read(&mut chunk).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}
