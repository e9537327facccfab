//! virtio-rng: fills each device-writable buffer with bytes from the host's `getrandom`.

use std::io;

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{
    read_config_bytes, require_version_1, ActivateError, QueueContext, VirtioDevice, INTERRUPT_USED_BUFFER, TYPE_RNG,
    VIRTIO_F_VERSION_1,
};

/// Maximum (and advertised) size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Random bytes given per request at most; the rest of a larger buffer is left untouched.
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    bytes: u64,
    requests: u64,
    errors: u64,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Rng {
        Rng::default()
    }

    fn process_requests(&mut self, ctx: &mut QueueContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.first_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut written: u32 = 0;
            for descriptor in chain.writable() {
                let len = descriptor.len().min(MAX_REQUEST_BYTES - written);
                match fill_guest(mem, descriptor.addr(), len) {
                    Ok(()) => written += len,
                    Err(_) => {
                        self.errors += 1;
                        break;
                    }
                }
                if written == MAX_REQUEST_BYTES {
                    break;
                }
            }
            self.requests += 1;
            self.bytes += u64::from(written);
            match queue.add_used(mem, head, written) {
                Ok(()) => used_any = true,
                Err(_) => self.errors += 1,
            }
        }
        if used_any {
            ctx.interrupt.trigger(INTERRUPT_USED_BUFFER);
        }
    }
}

/// Writes `len` random bytes at `addr`, failing (before writing) if the range is not RAM.
fn fill_guest(mem: &crate::GuestMemoryMmap, addr: GuestAddress, len: u32) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let mut done: u32 = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u32);
        let piece = &mut chunk[..n as usize];
        let at = addr
            .checked_add(u64::from(done))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Check before spending entropy; write_slice checks again.
        if !vm_memory::GuestMemoryBackend::check_range(mem, at, piece.len()) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        getrandom(piece)?;
        mem.write_slice(piece, at).map_err(io::Error::other)?;
        done += n;
    }
    Ok(())
}

/// Fills `buf` from the kernel's CSPRNG.
pub(crate) fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, exclusively borrowed buffer of `rest.len()` bytes, and
        // getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data);
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError> {
        require_version_1(acked_features)
    }

    fn reset(&mut self) {}

    fn process_queue(&mut self, queue_index: usize, ctx: &mut QueueContext<'_>) {
        if queue_index == 0 {
            self.process_requests(ctx);
        }
    }

    fn counters(&self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes, "requests": self.requests, "errors": self.errors })
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::testing::{guest_memory, interrupt, DriverQueue, RAM_SIZE};

    #[test]
    fn fills_writable_buffers_and_caps_requests() {
        let mem = guest_memory();
        let mut driver = DriverQueue::new(&mem, 16);
        let mut queues = vec![driver.queue()];
        let irq = interrupt();
        let mut rng = Rng::new();
        driver.add_chain(&[(0x1_0000, 16, false), (0x2_0000, 4000, true), (0x3_0000, 96, true)]);
        driver.add_chain(&[(0x4_0000, 0x2_0000, true)]);
        driver.add_chain(&[(RAM_SIZE - 8, 16, true)]);
        driver.add_chain(&[(0x1_0000, 16, false)]);
        rng.process_queue(
            0,
            &mut QueueContext {
                mem: &mem,
                queues: &mut queues,
                interrupt: &irq,
            },
        );

        assert_eq!(driver.used_idx(), 4);
        assert_eq!(driver.used(0).1, 4096);
        assert_eq!(driver.used(1).1, MAX_REQUEST_BYTES);
        assert_eq!(driver.used(2).1, 0, "outside RAM");
        assert_eq!(driver.used(3).1, 0, "nothing writable");
        let mut filled = vec![0u8; 4000];
        mem.read_slice(&mut filled, GuestAddress(0x2_0000)).unwrap();
        assert!(filled.iter().filter(|&&b| b == 0).count() < 100, "random, not zero");
        let mut beyond = vec![0xffu8; 16];
        mem.read_slice(&mut beyond, GuestAddress(0x4_0000 + u64::from(MAX_REQUEST_BYTES)))
            .unwrap();
        assert_eq!(beyond, [0; 16], "capped");
        let counters = rng.counters();
        assert_eq!(counters["requests"], 4);
        assert_eq!(counters["bytes"], 4096 + u64::from(MAX_REQUEST_BYTES));
        assert_eq!(counters["errors"], 1);
        assert_eq!(irq.status(), INTERRUPT_USED_BUFFER);
    }
}
