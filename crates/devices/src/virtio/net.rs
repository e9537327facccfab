//! virtio-net over a tap device: one frame per descriptor chain, each preceded by the
//! 12-byte `virtio_net_hdr_v1`, no offloads.
//!
//! The frame I/O only needs an fd on which one `read`/`write` is one frame with its vnet
//! header: a tap opened with `IFF_VNET_HDR` ([`Tap::open`]), or any such fd handed over with
//! [`Tap::from_fd`] (a `SOCK_SEQPACKET` socket in the unit tests).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use event_manager::EventSet;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{
    read_config_bytes, require_version_1, ActivateError, EventSource, QueueContext, VirtioDevice,
    INTERRUPT_USED_BUFFER, TYPE_NET, VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::{set_nonblocking, RateLimitConfig, RateLimiter};
use crate::GuestMemoryMmap;

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Maximum (and advertised) size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_net_hdr_v1)`: precedes every frame, on the tap and in the queues.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame handled, header included: the vnet header plus 64 KiB of payload plus
/// Ethernet and VLAN headers (as Firecracker).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;
/// Token of the tap fd in [`VirtioDevice::event_sources`].
pub const TAP_TOKEN: u32 = 0;
/// Token of the receive rate limiter's timer.
pub const RX_RATE_LIMITER_TOKEN: u32 = 1;
/// Token of the transmit rate limiter's timer.
pub const TX_RATE_LIMITER_TOKEN: u32 = 2;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a tap or a net device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Tap names are 1 to 15 bytes without NUL.
    #[error("invalid tap name {name:?}: must be 1 to 15 bytes without NUL")]
    InvalidTapName {
        /// The rejected name.
        name: String,
    },
    /// No network interface of that name exists (we never create taps: the agent does).
    #[error("tap {name} does not exist")]
    NoSuchTap {
        /// The missing tap.
        name: String,
    },
    /// Opening `/dev/net/tun` failed.
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed (no such tap, or not allowed to use it).
    #[error("attaching to tap {name} (TUNSETIFF)")]
    AttachTap {
        /// The tap.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("setting the vnet header size of tap {name} (TUNSETVNETHDRSZ)")]
    SetVnetHeaderSize {
        /// The tap.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Making the frame fd non-blocking failed.
    #[error("making the tap fd non-blocking")]
    SetNonBlocking(#[source] io::Error),
    /// Creating a rate limiter's timer failed.
    #[error("creating the rate-limiter timer of tap {name}")]
    RateLimiter {
        /// The tap.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A non-blocking fd carrying one frame (with its 12-byte vnet header) per read or write.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
    /// 12-byte vnet header, non-blocking.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
            return Err(NetError::InvalidTapName { name: name.to_owned() });
        }
        // TUNSETIFF would silently create a missing tap; refuse instead.
        let c_name = std::ffi::CString::new(name).map_err(|_| NetError::InvalidTapName { name: name.to_owned() })?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(NetError::NoSuchTap { name: name.to_owned() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;

        // SAFETY: `ifreq` is plain data (integers, arrays, a union of such and a pointer we
        // never read), for which all zero bytes are a valid value.
        let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifreq.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifreq.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and updates one `struct ifreq`, which `ifreq` is and which
        // we borrow exclusively for the call; `file` is an open /dev/net/tun fd.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifreq) } < 0 {
            let source = io::Error::last_os_error();
            return Err(NetError::AttachTap {
                name: name.to_owned(),
                source,
            });
        }
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points to
        // `header_len` for the duration of the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            let source = io::Error::last_os_error();
            return Err(NetError::SetVnetHeaderSize {
                name: name.to_owned(),
                source,
            });
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// Uses an already open fd with tap semantics (one frame with its 12-byte vnet header
    /// per read/write): a tap opened by a privileged parent, or a `SOCK_SEQPACKET` socket.
    /// Makes it non-blocking.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Tap, NetError> {
        set_nonblocking(fd.as_raw_fd()).map_err(NetError::SetNonBlocking)?;
        Ok(Tap {
            file: File::from(fd),
            name: name.to_owned(),
        })
    }

    /// The tap's interface name (or the name given to [`Tap::from_fd`]).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[derive(Debug, Default)]
struct NetCounters {
    rx_frames: u64,
    rx_bytes: u64,
    tx_frames: u64,
    tx_bytes: u64,
    rx_dropped: u64,
    tx_dropped: u64,
    errors: u64,
    throttled_events: u64,
}

/// The network device.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// The frame last read from the tap; `rx_pending` says whether it still awaits a buffer.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    tx_frame: Vec<u8>,
    counters: NetCounters,
}

impl Net {
    /// Attaches to the existing tap `tap_name`. `rate_limit` applies to each direction
    /// separately (frames and bytes, vnet header excluded).
    pub fn new(tap_name: &str, mac: [u8; 6], rate_limit: Option<RateLimitConfig>) -> Result<Net, NetError> {
        Net::with_tap(Tap::open(tap_name)?, mac, rate_limit)
    }

    /// A device on an already open [`Tap`].
    pub fn with_tap(tap: Tap, mac: [u8; 6], rate_limit: Option<RateLimitConfig>) -> Result<Net, NetError> {
        let limiter = || {
            RateLimiter::from_config(rate_limit.as_ref()).map_err(|source| NetError::RateLimiter {
                name: tap.name.clone(),
                source,
            })
        };
        Ok(Net {
            rx_limiter: limiter()?,
            tx_limiter: limiter()?,
            tap,
            mac,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            tx_frame: vec![0; MAX_FRAME_LEN],
            counters: NetCounters::default(),
        })
    }

    /// Moves frames from the tap into receive buffers until the tap is drained, the queue
    /// has no buffer left (the frame read stays pending), or the rate limiter refuses.
    fn process_rx(&mut self, ctx: &mut QueueContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX_QUEUE) else {
            return;
        };
        let mut used_any = false;
        loop {
            let frame_len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            if self.rx_limiter.is_blocked() {
                self.rx_pending = Some(frame_len);
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(frame_len);
                break;
            };
            let payload_len = (frame_len - VNET_HDR_LEN) as u64;
            if !self.rx_limiter.consume(1, payload_len) {
                queue.go_to_previous_position();
                self.rx_pending = Some(frame_len);
                self.counters.throttled_events += 1;
                break;
            }
            let head = chain.head_index();
            let used_len = self.deliver_frame(mem, chain.writable(), frame_len);
            match queue.add_used(mem, head, used_len) {
                Ok(()) => used_any = true,
                Err(_) => self.counters.errors += 1,
            }
        }
        if used_any {
            ctx.interrupt.trigger(INTERRUPT_USED_BUFFER);
        }
    }

    /// Reads the next frame into `rx_frame`; `None` once the tap has nothing more.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            match self.tap.file.read(&mut self.rx_frame) {
                Ok(len) if (VNET_HDR_LEN..=self.rx_frame.len()).contains(&len) => return Some(len),
                // End of file: only a socket whose peer is gone.
                Ok(0) => return None,
                Ok(_) => self.counters.rx_dropped += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.counters.errors += 1;
                    return None;
                }
            }
        }
    }

    /// Copies the frame in `rx_frame` into the writable descriptors; returns the used length
    /// (0 if the frame was dropped because it does not fit or a buffer is not in RAM).
    fn deliver_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        writable: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        frame_len: usize,
    ) -> u32 {
        // Without GUEST_CSUM/GUEST_TSO the flags and GSO fields must be zero (the tap may set
        // DATA_VALID); without MRG_RXBUF virtio 1.x still wants num_buffers = 1, bytes the
        // tap leaves alone.
        self.rx_frame[..NUM_BUFFERS_OFFSET].fill(0);
        self.rx_frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        let mut copied = 0;
        for descriptor in writable {
            if copied == frame_len {
                break;
            }
            let len = (descriptor.len() as usize).min(frame_len - copied);
            if mem
                .write_slice(&self.rx_frame[copied..copied + len], descriptor.addr())
                .is_err()
            {
                self.counters.errors += 1;
                break;
            }
            copied += len;
        }
        if copied < frame_len {
            self.counters.rx_dropped += 1;
            return 0;
        }
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += (frame_len - VNET_HDR_LEN) as u64;
        // At most MAX_FRAME_LEN.
        frame_len as u32
    }

    /// Sends every available transmit chain as one frame, until the queue is empty or the
    /// rate limiter refuses (the refused chain stays available).
    fn process_tx(&mut self, ctx: &mut QueueContext<'_>) {
        if self.tx_limiter.is_blocked() {
            return;
        }
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX_QUEUE) else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match self.gather_frame(mem, chain.readable()) {
                Some(frame_len) => {
                    let payload_len = (frame_len - VNET_HDR_LEN) as u64;
                    if !self.tx_limiter.consume(1, payload_len) {
                        queue.go_to_previous_position();
                        self.counters.throttled_events += 1;
                        break;
                    }
                    // We offer no offloads: whatever the guest put in the header, the tap
                    // gets a plain frame.
                    self.tx_frame[..VNET_HDR_LEN].fill(0);
                    // A tap takes a whole frame or fails.
                    match self.tap.file.write(&self.tx_frame[..frame_len]) {
                        Ok(written) if written == frame_len => {
                            self.counters.tx_frames += 1;
                            self.counters.tx_bytes += payload_len;
                        }
                        _ => self.counters.tx_dropped += 1,
                    }
                }
                None => {
                    self.counters.tx_dropped += 1;
                    self.counters.errors += 1;
                }
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used_any = true,
                Err(_) => self.counters.errors += 1,
            }
        }
        if used_any {
            ctx.interrupt.trigger(INTERRUPT_USED_BUFFER);
        }
    }

    /// Copies the readable descriptors into `tx_frame`; `None` if the frame is shorter than
    /// the vnet header, longer than [`MAX_FRAME_LEN`], or not in RAM.
    fn gather_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> Option<usize> {
        let mut frame_len: usize = 0;
        for descriptor in readable {
            let len = descriptor.len() as usize;
            let piece = self.tx_frame.get_mut(frame_len..frame_len.checked_add(len)?)?;
            mem.read_slice(piece, descriptor.addr()).ok()?;
            frame_len += len;
        }
        (frame_len >= VNET_HDR_LEN).then_some(frame_len)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError> {
        require_version_1(acked_features)
    }

    fn reset(&mut self) {
        if self.rx_pending.take().is_some() {
            self.counters.rx_dropped += 1;
        }
    }

    fn process_queue(&mut self, queue_index: usize, ctx: &mut QueueContext<'_>) {
        match queue_index {
            RX_QUEUE => self.process_rx(ctx),
            TX_QUEUE => self.process_tx(ctx),
            _ => {}
        }
    }

    fn event_sources(&self) -> Vec<EventSource> {
        let tap = EventSource {
            fd: self.tap.as_raw_fd(),
            // Edge-triggered: an inactive device (or a full rx queue) leaves frames in the
            // tap without making the event loop spin; we read until EAGAIN otherwise.
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
            token: TAP_TOKEN,
        };
        let timers = [
            (self.rx_limiter.timer_fd(), RX_RATE_LIMITER_TOKEN),
            (self.tx_limiter.timer_fd(), TX_RATE_LIMITER_TOKEN),
        ];
        std::iter::once(tap)
            .chain(timers.into_iter().filter_map(|(fd, token)| {
                fd.map(|fd| EventSource {
                    fd,
                    events: EventSet::IN,
                    token,
                })
            }))
            .collect()
    }

    fn handle_event(&mut self, token: u32, _events: EventSet, ctx: Option<&mut QueueContext<'_>>) {
        match token {
            RX_RATE_LIMITER_TOKEN => self.rx_limiter.event_handler(),
            TX_RATE_LIMITER_TOKEN => self.tx_limiter.event_handler(),
            _ => {}
        }
        // Not activated: leave frames in the tap; the driver's first rx notification
        // after activation picks them up.
        let Some(ctx) = ctx else {
            return;
        };
        match token {
            TAP_TOKEN | RX_RATE_LIMITER_TOKEN => self.process_rx(ctx),
            TX_RATE_LIMITER_TOKEN => self.process_tx(ctx),
            _ => {}
        }
    }

    fn counters(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "rx_frames": c.rx_frames,
            "rx_bytes": c.rx_bytes,
            "tx_frames": c.tx_frames,
            "tx_bytes": c.tx_bytes,
            "rx_dropped": c.rx_dropped,
            "tx_dropped": c.tx_dropped,
            "errors": c.errors,
            "throttled_events": c.throttled_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::time::Duration;

    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::testing::{guest_memory, interrupt, Buf, DriverQueue, RAM_SIZE};
    use crate::virtio::Interrupt;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const RX_QUEUE_ADDR: u64 = 0;
    const TX_QUEUE_ADDR: u64 = 0x8000;

    /// A connected `SOCK_SEQPACKET` pair: one end stands in for the tap.
    fn frame_socket_pair() -> (OwnedFd, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0, "{}", io::Error::last_os_error());
        // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    struct Harness<'a> {
        mem: &'a GuestMemoryMmap,
        rx: DriverQueue<'a>,
        tx: DriverQueue<'a>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
        net: Net,
        peer: File,
    }

    impl<'a> Harness<'a> {
        fn new(mem: &'a GuestMemoryMmap, rate_limit: Option<RateLimitConfig>) -> Self {
            let (device_end, peer) = frame_socket_pair();
            let tap = Tap::from_fd(device_end, "test0").unwrap();
            let net = Net::with_tap(tap, MAC, rate_limit).unwrap();
            let rx = DriverQueue::at(mem, GuestAddress(RX_QUEUE_ADDR), 16);
            let tx = DriverQueue::at(mem, GuestAddress(TX_QUEUE_ADDR), 16);
            let queues = vec![rx.queue(), tx.queue()];
            Harness {
                mem,
                rx,
                tx,
                queues,
                interrupt: interrupt(),
                net,
                peer,
            }
        }

        fn ctx(&mut self) -> (QueueContext<'_>, &mut Net) {
            (
                QueueContext {
                    mem: self.mem,
                    queues: &mut self.queues,
                    interrupt: &self.interrupt,
                },
                &mut self.net,
            )
        }

        fn notify(&mut self, queue: usize) {
            let (mut ctx, net) = self.ctx();
            net.process_queue(queue, &mut ctx);
        }

        fn event(&mut self, token: u32) {
            let (mut ctx, net) = self.ctx();
            net.handle_event(token, EventSet::IN, Some(&mut ctx));
        }

        fn counter(&self, name: &str) -> u64 {
            self.net.counters()[name].as_u64().unwrap()
        }

        fn send_from_peer(&mut self, frame: &[u8]) {
            assert_eq!(self.peer.write(frame).unwrap(), frame.len());
        }

        fn receive_at_peer(&mut self) -> Option<Vec<u8>> {
            let mut buf = vec![0u8; MAX_FRAME_LEN + 100];
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.peer.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            (n >= 0).then(|| {
                buf.truncate(n as usize);
                buf
            })
        }
    }

    fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend(std::iter::repeat_n(fill, payload_len));
        frame
    }

    #[test]
    fn config_features_and_event_sources() {
        let mem = guest_memory();
        let h = Harness::new(&mem, None);
        let mut mac = [0u8; 8];
        h.net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(h.net.device_features(), VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC);
        assert_eq!(h.net.queue_max_sizes(), &[256, 256]);
        let sources = h.net.event_sources();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].token, TAP_TOKEN);
        assert!(sources[0].events.contains(EventSet::EDGE_TRIGGERED));
        let limited = Harness::new(
            &mem,
            Some(RateLimitConfig {
                bytes_per_sec: Some(1),
                ..Default::default()
            }),
        );
        let tokens: Vec<u32> = limited.net.event_sources().iter().map(|s| s.token).collect();
        assert_eq!(tokens, [TAP_TOKEN, RX_RATE_LIMITER_TOKEN, TX_RATE_LIMITER_TOKEN]);
    }

    #[test]
    fn invalid_tap_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(
                matches!(Tap::open(name), Err(NetError::InvalidTapName { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn tx_sends_each_chain_as_one_frame_with_a_clean_header() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        let mut header = [0u8; VNET_HDR_LEN];
        header[0] = 1; // NEEDS_CSUM: an offload we did not offer.
        mem.write_slice(&header, GuestAddress(0x1_0000)).unwrap();
        mem.write_slice(&[0xab; 100], GuestAddress(0x2_0000)).unwrap();
        let head =
            h.tx.add_chain(&[(0x1_0000, 12, false), (0x2_0000, 60, false), (0x2_0000 + 60, 40, false)]);
        h.notify(TX_QUEUE);
        assert_eq!(h.receive_at_peer().unwrap(), frame(100, 0xab));
        assert_eq!(h.tx.used_idx(), 1);
        assert_eq!(h.tx.used(0), (u32::from(head), 0));
        assert_eq!(h.counter("tx_frames"), 1);
        assert_eq!(h.counter("tx_bytes"), 100);
        assert_eq!(h.interrupt.status(), INTERRUPT_USED_BUFFER);
    }

    #[test]
    fn tx_drops_malformed_chains() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        let cases: &[&[Buf]] = &[
            &[(0x1_0000, 8, false)],                                 // shorter than the header
            &[(0x1_0000, MAX_FRAME_LEN as u32 + 1, false)],          // too long
            &[(0x1_0000, 40_000, false), (0x2_0000, 40_000, false)], // too long in total
            &[(RAM_SIZE - 10, 100, false)],                          // outside RAM
            &[(u64::MAX - 5, 100, false)],                           // address overflows
        ];
        for bufs in cases {
            h.tx.add_chain(bufs);
        }
        h.notify(TX_QUEUE);
        assert_eq!(h.tx.used_idx(), cases.len() as u16, "every chain returned");
        assert!(h.receive_at_peer().is_none());
        assert_eq!(h.counter("tx_dropped"), cases.len() as u64);
        assert_eq!(h.counter("errors"), cases.len() as u64);
        // A maximal frame still goes through.
        h.tx.add_chain(&[(0x1_0000, MAX_FRAME_LEN as u32, false)]);
        h.notify(TX_QUEUE);
        assert_eq!(h.receive_at_peer().unwrap().len(), MAX_FRAME_LEN);
    }

    #[test]
    fn rx_keeps_a_frame_until_a_buffer_arrives() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        let mut sent = frame(60, 0x5a);
        sent[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID, which we did not offer
        sent[NUM_BUFFERS_OFFSET] = 0x77; // whatever the tap leaves there
        h.send_from_peer(&sent);
        h.send_from_peer(&frame(30, 0x33));
        // The tap is readable but the guest gave no buffer yet.
        h.event(TAP_TOKEN);
        assert_eq!(h.rx.used_idx(), 0);
        assert_eq!(h.interrupt.status(), 0);

        let head = h.rx.add_chain(&[(0x1_0000, 40, true), (0x2_0000, 1500, true)]);
        h.notify(RX_QUEUE);
        assert_eq!(h.rx.used_idx(), 1);
        assert_eq!(h.rx.used(0), (u32::from(head), 72));
        let mut got = vec![0u8; 72];
        mem.read_slice(&mut got[..40], GuestAddress(0x1_0000)).unwrap();
        mem.read_slice(&mut got[40..], GuestAddress(0x2_0000)).unwrap();
        let mut expected = frame(60, 0x5a);
        expected[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(got, expected);
        assert_eq!(h.interrupt.status(), INTERRUPT_USED_BUFFER);

        // The second frame waited in the tap; the next buffer gets it.
        h.rx.add_chain(&[(0x3_0000, 1500, true)]);
        h.notify(RX_QUEUE);
        assert_eq!(h.rx.used(1).1, 42);
        assert_eq!(h.counter("rx_frames"), 2);
        assert_eq!(h.counter("rx_bytes"), 90);
        // Nothing more: a tap event is harmless.
        h.event(TAP_TOKEN);
        assert_eq!(h.rx.used_idx(), 2);
    }

    #[test]
    fn rx_drops_frames_that_do_not_fit_and_runts() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        h.send_from_peer(&[0u8; 5]);
        h.send_from_peer(&frame(200, 1));
        h.send_from_peer(&frame(20, 2));
        h.rx.add_chain(&[(0x1_0000, 100, true), (0x2_0000, 4, false)]);
        h.rx.add_chain(&[(RAM_SIZE - 10, 100, true)]);
        h.event(TAP_TOKEN);
        assert_eq!(h.rx.used_idx(), 2);
        assert_eq!(h.rx.used(0).1, 0, "too small: returned empty");
        assert_eq!(h.rx.used(1).1, 0, "outside RAM: returned empty");
        assert_eq!(h.counter("rx_dropped"), 3);
        assert_eq!(h.counter("errors"), 1);
        assert_eq!(h.counter("rx_frames"), 0);
    }

    #[test]
    fn inactive_device_leaves_frames_in_the_tap() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        h.send_from_peer(&frame(10, 9));
        h.net.handle_event(TAP_TOKEN, EventSet::IN, None);
        h.rx.add_chain(&[(0x1_0000, 100, true)]);
        h.notify(RX_QUEUE);
        assert_eq!(h.rx.used(0).1, 22);
    }

    #[test]
    fn rate_limits_apply_per_direction() {
        let mem = guest_memory();
        // 5 frames/s, burst 1: a second frame in each direction waits 200 ms.
        let limit = RateLimitConfig {
            ops_per_sec: Some(5),
            ops_burst: Some(1),
            ..Default::default()
        };
        let mut h = Harness::new(&mem, Some(limit));
        for _ in 0..2 {
            h.tx.add_chain(&[(0x1_0000, 20, false)]);
            h.send_from_peer(&frame(10, 3));
            h.rx.add_chain(&[(0x2_0000, 100, true)]);
        }
        h.notify(TX_QUEUE);
        h.notify(RX_QUEUE);
        assert_eq!((h.tx.used_idx(), h.rx.used_idx()), (1, 1));
        assert_eq!(h.counter("throttled_events"), 2);
        std::thread::sleep(Duration::from_millis(250));
        h.event(TX_RATE_LIMITER_TOKEN);
        assert_eq!((h.tx.used_idx(), h.rx.used_idx()), (2, 1));
        h.event(RX_RATE_LIMITER_TOKEN);
        assert_eq!((h.tx.used_idx(), h.rx.used_idx()), (2, 2));
        assert_eq!(h.counter("tx_frames"), 2);
        assert_eq!(h.counter("rx_frames"), 2);
    }

    #[test]
    fn reset_drops_the_pending_frame() {
        let mem = guest_memory();
        let mut h = Harness::new(&mem, None);
        h.send_from_peer(&frame(10, 9));
        h.event(TAP_TOKEN);
        h.net.reset();
        assert_eq!(h.counter("rx_dropped"), 1);
        h.rx.add_chain(&[(0x1_0000, 100, true)]);
        h.notify(RX_QUEUE);
        assert_eq!(h.rx.used_idx(), 0);
    }
}
