//! Address buses: route a vCPU's port I/O or MMIO exit to the device covering it.

use std::sync::Arc;

/// A device on a bus. Interior mutability: vCPU threads call in concurrently.
pub trait BusDevice: Send + Sync {
    /// Guest read of `data.len()` bytes at `offset` from the device's base.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` from the device's base.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Non-overlapping ranges, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, Arc<dyn BusDevice>)>,
}

impl Bus {
    /// Adds `device` at `[base, base + len)`. Overlaps are a programming error.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) {
        assert!(
            self.ranges.iter().all(|(b, l, _)| base + len <= *b || b + l <= base),
            "bus range {base:#x}+{len:#x} overlaps"
        );
        self.ranges.push((base, len, device));
        self.ranges.sort_by_key(|(b, _, _)| *b);
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<dyn BusDevice>)> {
        let index = self
            .ranges
            .partition_point(|(base, _, _)| *base <= addr)
            .checked_sub(1)?;
        let (base, len, device) = &self.ranges[index];
        (addr - base < *len).then_some((addr - base, device))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones. Returns
    /// whether a device claimed the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; unclaimed writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, device)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let device = Arc::new(Recorder::default());
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, device.clone());
        let mut byte = [0u8];
        assert!(bus.read(0x3fa, &mut byte));
        assert_eq!(byte, [2]);
        assert!(!bus.read(0x400, &mut byte));
        assert_eq!(byte, [0xff]);
        assert!(bus.write(0x3f8, &[7]));
        assert!(!bus.write(0x3f7, &[7]));
        assert_eq!(device.0.lock().unwrap().as_slice(), &[(0, vec![7])]);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::default();
        bus.insert(0x60, 8, Arc::new(Recorder::default()));
        bus.insert(0x64, 1, Arc::new(Recorder::default()));
    }
}
