//! Serial console output on COM1 and the pieces `say!` prints (no `core::fmt`).

use crate::io::outb;

/// COM1 transmit holding register. The VMM's UART is always ready, so LSR is not polled.
const THR: u16 = 0x3f8;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Sends bytes as they are.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        outb(THR, b);
    }
}

/// Something `say!` can print.
pub trait Out {
    /// Sends `self` to the console.
    fn out(&self);
}

impl Out for str {
    fn out(&self) {
        write(self.as_bytes());
    }
}

impl Out for [u8] {
    fn out(&self) {
        write(self);
    }
}

/// Unsigned decimal.
pub struct Dec(pub u64);

impl Out for Dec {
    fn out(&self) {
        let mut digits = [0u8; 20];
        let mut value = self.0;
        let mut start = digits.len();
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            start -= 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        write(digits.get(start..).unwrap_or(&[]));
    }
}

/// Lower-case hexadecimal without leading zeros or prefix.
pub struct Hex(pub u64);

impl Out for Hex {
    fn out(&self) {
        let mut shift = 60;
        while shift > 0 && (self.0 >> shift) & 0xf == 0 {
            shift -= 4;
        }
        loop {
            outb(THR, HEX[((self.0 >> shift) & 0xf) as usize]);
            if shift == 0 {
                break;
            }
            shift -= 4;
        }
    }
}

fn hex_byte(b: u8) {
    outb(THR, HEX[usize::from(b >> 4)]);
    outb(THR, HEX[usize::from(b & 0xf)]);
}

/// Two lower-case hex digits per byte, no separator.
pub struct HexBytes<'a>(pub &'a [u8]);

impl Out for HexBytes<'_> {
    fn out(&self) {
        for &b in self.0 {
            hex_byte(b);
        }
    }
}

/// A MAC address, `aa:bb:cc:dd:ee:ff`.
pub struct Mac(pub [u8; 6]);

impl Out for Mac {
    fn out(&self) {
        for (i, &b) in self.0.iter().enumerate() {
            if i > 0 {
                outb(THR, b':');
            }
            hex_byte(b);
        }
    }
}

/// An IPv4 address, `a.b.c.d`.
pub struct Ip(pub [u8; 4]);

impl Out for Ip {
    fn out(&self) {
        for (i, &b) in self.0.iter().enumerate() {
            if i > 0 {
                outb(THR, b'.');
            }
            Dec(u64::from(b)).out();
        }
    }
}

/// Bytes up to the first NUL, with anything unprintable shown as `?`.
pub struct Text<'a>(pub &'a [u8]);

impl Out for Text<'_> {
    fn out(&self) {
        for &b in self.0.iter().take_while(|&&b| b != 0) {
            outb(THR, if (0x20..0x7f).contains(&b) { b } else { b'?' });
        }
    }
}

/// A virtio-blk status byte, or `none` when the device never wrote one (still 0xff).
pub struct Status(pub Option<u8>);

impl Out for Status {
    fn out(&self) {
        match self.0 {
            Some(s) if s != 0xff => Dec(u64::from(s)).out(),
            _ => write(b"none"),
        }
    }
}
