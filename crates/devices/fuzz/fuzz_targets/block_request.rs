//! Fuzzes virtio-blk request processing: the descriptor table, the available ring and the
//! request bytes in guest memory all come from the input; the device runs against a small
//! temp file. Nothing may panic, and the VMM must never touch memory outside guest RAM
//! (ASan reports it).
//!
//! Input layout: byte 0 = flags (bit 0: read-only disk); 16 descriptors of 16 bytes
//! (address, length, flags, next; an address or length with its top bit clear is folded
//! into the guest-memory range to reach interesting cases, otherwise used raw); one byte
//! = number of available heads, then that many head indices; the rest is copied into guest
//! memory at `PAYLOAD` (request headers and data).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use hearth_devices::virtio::block::Block;
use hearth_devices::virtio::{Interrupt, QueueContext, VirtioDevice};
use hearth_devices::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 16;
/// Two adjacent regions (requests can straddle them), a hole, then a third small one.
const REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x3_0000, 0x1000)];
/// Just past the last region: folded addresses sometimes straddle the end of RAM.
const ADDRESS_SPAN: u64 = 0x3_1000 + 0x100;
const PAYLOAD: u64 = 0x1000;
const DESCRIPTOR_BYTES: usize = 16 * QUEUE_SIZE as usize;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hearth-fuzz-disk-{}", std::process::id()));
        // Four sectors and a partial one.
        std::fs::write(&path, vec![0x5a; 4 * 512 + 100]).unwrap();
        path
    })
}

fn fold(raw: u64, top_bit: u64, span: u64) -> u64 {
    if raw & top_bit == 0 {
        raw % span
    } else {
        raw
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + DESCRIPTOR_BYTES + 1 {
        return;
    }
    let (flags, rest) = data.split_at(1);
    let (descriptors, rest) = rest.split_at(DESCRIPTOR_BYTES);
    let (&head_count, rest) = rest.split_first().unwrap();
    let head_count = usize::from(head_count).min(rest.len()).min(usize::from(QUEUE_SIZE));
    let (heads, payload) = rest.split_at(head_count);

    let ranges: Vec<(GuestAddress, usize)> = REGIONS.iter().map(|&(start, len)| (GuestAddress(start), len)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
    let driver = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);

    let mut table = [0u8; DESCRIPTOR_BYTES];
    for (raw, out) in descriptors.chunks_exact(16).zip(table.chunks_exact_mut(16)) {
        let addr = fold(u64::from_le_bytes(raw[..8].try_into().unwrap()), 1 << 63, ADDRESS_SPAN);
        let len = fold(
            u64::from(u32::from_le_bytes(raw[8..12].try_into().unwrap())),
            1 << 31,
            0x4000,
        );
        out[..8].copy_from_slice(&addr.to_le_bytes());
        out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        out[12..].copy_from_slice(&raw[12..]);
    }
    mem.write_slice(&table, driver.desc_table_addr()).unwrap();
    let avail = driver.avail_addr();
    for (i, &head) in heads.iter().enumerate() {
        // Heads up to 2 * QUEUE_SIZE: some are out of range on purpose.
        let head = u16::from(head) % (2 * QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(avail.0 + 4 + 2 * i as u64)).unwrap();
    }
    mem.write_obj(head_count as u16, GuestAddress(avail.0 + 2)).unwrap();
    let payload_len = payload.len().min(0x1_0000 - PAYLOAD as usize);
    mem.write_slice(&payload[..payload_len], GuestAddress(PAYLOAD)).unwrap();

    let read_only = flags[0] & 1 != 0;
    let mut block = Block::new(disk(), read_only, Some("fuzz".into()), None).unwrap();
    let mut queues: Vec<Queue> = vec![driver.create_queue().unwrap()];
    let interrupt = Interrupt::new(EventFd::new(0).unwrap());
    let mut ctx = QueueContext {
        mem: &mem,
        queues: &mut queues,
        interrupt: &interrupt,
    };
    block.process_queue(0, &mut ctx);
    let _ = block.counters();
});
