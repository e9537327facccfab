//! Wall-clock time from the TSC, calibrated once against PIT channel 2 (as Linux's
//! `pit_calibrate_tsc` does). The network code needs real timeouts (DHCP retransmits every
//! second, TCP every 500 ms), and a poll round takes very different times on different
//! hosts, so counting rounds (as the block code does) would not do.

use core::arch::asm;

use crate::io::{inb, outb};
use crate::Global;

/// PIT channel 2 data port and the mode/command port.
const PIT_CH2: u16 = 0x42;
const PIT_MODE: u16 = 0x43;
/// Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
const PIT_CH2_ONESHOT: u8 = 0xb0;
/// "Port B" (KVM's speaker device, `KVM_PIT_SPEAKER_DUMMY`): bit 0 = channel 2 gate,
/// bit 1 = speaker data, bit 5 = channel 2 output.
const PORT_B: u16 = 0x61;
const GATE: u8 = 0x01;
const SPEAKER: u8 = 0x02;
const OUT2: u8 = 0x20;
const PIT_HZ: u64 = 1_193_182;
/// Calibration length: long enough that a VM exit or two (tens of µs nested) hardly matter.
const CALIBRATE_MS: u64 = 10;
/// Calibration runs; the shortest counts (see `calibrate`).
const CALIBRATE_RUNS: u32 = 5;
/// Port reads before giving up on the PIT (a working one needs far fewer).
const CALIBRATE_POLLS: u32 = 10_000_000;
/// Plausible TSC rates (ticks per ms): 100 MHz to 10 GHz.
const PLAUSIBLE: core::ops::Range<u64> = 100_000..10_000_000;
/// Assumed when the PIT does not count: 2 GHz.
const FALLBACK_PER_MS: u64 = 2_000_000;

/// TSC ticks per millisecond; 0 until calibrated.
static TICKS_PER_MS: Global<u64> = Global::new(0);

/// The time-stamp counter (also the probe's only source of randomness).
pub fn tsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter into EDX:EAX.
    unsafe { asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags)) }
    u64::from(high) << 32 | u64::from(low)
}

/// TSC ticks per millisecond, calibrating on first use (about 50 ms).
pub fn ticks_per_ms() -> u64 {
    // SAFETY: single-threaded; only this function touches the value.
    let cached = unsafe { &mut *TICKS_PER_MS.get() };
    if *cached == 0 {
        *cached = calibrate();
    }
    *cached
}

/// TSC ticks per millisecond: the fewest of several runs. Whenever the host deschedules
/// the vCPU (busy hosts do, for milliseconds) a run counts too many ticks, never too few
/// (the TSC is read before the PIT starts and after it ends), so the fewest is closest.
fn calibrate() -> u64 {
    let best = (0..CALIBRATE_RUNS).filter_map(|_| measure()).min();
    match best.map(|ticks| ticks / CALIBRATE_MS) {
        Some(per_ms) if PLAUSIBLE.contains(&per_ms) => per_ms,
        _ => {
            say!("tsc calibration failed");
            FALLBACK_PER_MS
        }
    }
}

/// TSC ticks while PIT channel 2 counts down `CALIBRATE_MS` (`None` if it never ends).
fn measure() -> Option<u64> {
    let latch = PIT_HZ * CALIBRATE_MS / 1000;
    outb(PORT_B, (inb(PORT_B) & !SPEAKER) | GATE);
    outb(PIT_MODE, PIT_CH2_ONESHOT);
    outb(PIT_CH2, latch as u8);
    let start = tsc();
    // Writing the high byte starts the count.
    outb(PIT_CH2, (latch >> 8) as u8);
    let mut polls = 0;
    while inb(PORT_B) & OUT2 == 0 {
        polls += 1;
        if polls >= CALIBRATE_POLLS {
            return None;
        }
    }
    Some(tsc().wrapping_sub(start))
}

/// A point in time some milliseconds from now.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self(tsc().wrapping_add(ms.saturating_mul(ticks_per_ms())))
    }

    /// Whether the deadline has passed (the TSC does not wrap in a VM's lifetime).
    pub fn passed(self) -> bool {
        tsc() >= self.0
    }
}
