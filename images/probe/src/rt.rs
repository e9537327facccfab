//! Freestanding runtime: `_start`, the C memory functions LLVM calls, and the panic handler.

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;

// The VMM enters here in 64-bit mode with RSI = zero page. Clear `.bss` (8-byte aligned by
// link.ld), switch to the probe's own stack and call `probe_main(zero_page)`.
global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    mov r12, rsi",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    shr rcx, 3",
    "    xor eax, eax",
    "    rep stosq",
    "    lea rsp, [rip + probe_stack_top]",
    "    xor ebp, ebp",
    "    mov rdi, r12",
    "    call {main}",
    "2:  jmp 2b",
    ".popsection",
    ".pushsection .stack, \"aw\", @nobits",
    ".balign 16",
    "    .skip 65536",
    "probe_stack_top:",
    ".popsection",
    main = sym crate::probe_main,
);

/// Copies `n` bytes forward with `rep movsb` (never a call back into `memcpy`).
///
/// # Safety
/// `src` and `dst` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear (ABI), so this copies upwards.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// Copies `n` bytes between possibly overlapping ranges.
///
/// # Safety
/// `src` and `dst` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: `dst` is below `src` or past its end: a forward copy reads each byte
        // before it is overwritten.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: `dst` overlaps the tail of `src`: copy downwards from the last byte, then
    // restore DF = 0 as the ABI requires.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _,
             inout("rdi") dst.add(n - 1) => _,
             inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

/// Fills `n` bytes with `c` using `rep stosb`.
///
/// # Safety
/// `dst` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// Compares `n` bytes (volatile reads, so LLVM cannot turn the loop into a `memcmp` call).
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and the caller guarantees both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Equality-only comparison: zero when equal.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the unwind tables of the precompiled `core`; the probe never unwinds.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// A fixed message (no formatting: `core::fmt` uses SSE), then power off, else triple fault.
#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    crate::uart::write(b"probe: panic\n");
    crate::io::outb(crate::io::ACPI_SLEEP_CONTROL, crate::io::SLEEP_S5);
    crate::io::triple_fault()
}
