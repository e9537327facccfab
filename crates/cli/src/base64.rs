//! Standard base64 decoding (RFC 4648), for the console output EC2 returns encoded.

/// Decodes standard base64, padded or not, ignoring whitespace and line breaks.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let symbols: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = match symbols.iter().position(|&c| c == b'=') {
        Some(pad) if symbols[pad..].iter().all(|&c| c == b'=') && symbols.len() - pad <= 2 => &symbols[..pad],
        Some(pad) => return Err(format!("misplaced '=' at offset {pad}")),
        None => &symbols[..],
    };
    if data.len() % 4 == 1 {
        return Err("truncated base64".into());
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for chunk in data.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let value = sextet(c).ok_or_else(|| format!("invalid base64 character {:?}", c as char))?;
            bits |= value << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc4648_vectors() {
        for (encoded, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYg", "foob"),
            ("Zm9v\nYmFy\n", "foobar"),
        ] {
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes(), "{encoded}");
        }
        assert_eq!(decode("//8=").unwrap(), [0xff, 0xff]);
    }

    #[test]
    fn refuses_what_is_not_base64() {
        assert!(decode("Zm9v!").is_err());
        assert!(decode("Z").is_err());
        assert!(decode("Zg=x").is_err());
    }
}
