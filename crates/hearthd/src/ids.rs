//! EC2 resource IDs: a prefix and 17 lowercase hex digits from the kernel's random source.

use std::fmt;

use crate::error::Ec2Error;

/// The kinds of resource IDs hearthd hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// `i-`: an instance.
    Instance,
    /// `r-`: a reservation (one RunInstances call).
    Reservation,
    /// `vol-`: a volume.
    Volume,
    /// `ami-`: an image.
    Image,
    /// `key-`: a key pair.
    KeyPair,
    /// `snap-`: a snapshot.
    Snapshot,
    /// `vpc-`: a VPC.
    Vpc,
    /// `subnet-`: a subnet.
    Subnet,
    /// `sg-`: a security group.
    SecurityGroup,
    /// `eipalloc-`: an Elastic IP allocation.
    Allocation,
    /// `eipassoc-`: an Elastic IP association.
    Association,
}

/// Hex digits in a generated ID.
pub const ID_HEX_DIGITS: usize = 17;

impl IdKind {
    /// The prefix, including the dash.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Instance => "i-",
            IdKind::Reservation => "r-",
            IdKind::Volume => "vol-",
            IdKind::Image => "ami-",
            IdKind::KeyPair => "key-",
            IdKind::Snapshot => "snap-",
            IdKind::Vpc => "vpc-",
            IdKind::Subnet => "subnet-",
            IdKind::SecurityGroup => "sg-",
            IdKind::Allocation => "eipalloc-",
            IdKind::Association => "eipassoc-",
        }
    }

    /// The EC2 resource type name used by DescribeTags.
    pub fn resource_type(self) -> &'static str {
        match self {
            IdKind::Instance => "instance",
            IdKind::Reservation => "reservation",
            IdKind::Volume => "volume",
            IdKind::Image => "image",
            IdKind::KeyPair => "key-pair",
            IdKind::Snapshot => "snapshot",
            IdKind::Vpc => "vpc",
            IdKind::Subnet => "subnet",
            IdKind::SecurityGroup => "security-group",
            IdKind::Allocation => "elastic-ip",
            IdKind::Association => "elastic-ip-association",
        }
    }

    /// Which kind an ID claims to be, by its prefix alone.
    pub fn of(id: &str) -> Option<IdKind> {
        [
            IdKind::Instance,
            IdKind::Reservation,
            IdKind::Volume,
            IdKind::Image,
            IdKind::KeyPair,
            IdKind::Snapshot,
            IdKind::Vpc,
            IdKind::Subnet,
            IdKind::SecurityGroup,
            IdKind::Allocation,
            IdKind::Association,
        ]
        .into_iter()
        .find(|kind| id.starts_with(kind.prefix()))
    }

    /// A new random ID of this kind.
    pub fn generate(self) -> String {
        let mut bytes = [0u8; 9];
        fill_random(&mut bytes);
        let mut id = String::with_capacity(self.prefix().len() + ID_HEX_DIGITS);
        id.push_str(self.prefix());
        for byte in bytes {
            id.push_str(&format!("{byte:02x}"));
        }
        id.truncate(self.prefix().len() + ID_HEX_DIGITS);
        id
    }

    /// Whether `id` is well formed for this kind: the prefix and 8 or 17 lowercase hex digits.
    pub fn is_well_formed(self, id: &str) -> bool {
        match id.strip_prefix(self.prefix()) {
            Some(hex) => {
                (hex.len() == 8 || hex.len() == ID_HEX_DIGITS)
                    && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            None => false,
        }
    }

    /// Checks `id`, answering the kind's `*.Malformed` error.
    pub fn validate(self, id: &str) -> Result<(), Ec2Error> {
        if self.is_well_formed(id) {
            return Ok(());
        }
        Err(match self {
            IdKind::Instance => Ec2Error::InstanceIdMalformed(id.to_string()),
            IdKind::Image => Ec2Error::ImageIdMalformed(id.to_string()),
            IdKind::Volume => Ec2Error::VolumeIdMalformed(id.to_string()),
            IdKind::Snapshot => Ec2Error::SnapshotIdMalformed(id.to_string()),
            IdKind::Vpc => Ec2Error::VpcIdMalformed(id.to_string()),
            IdKind::Subnet => Ec2Error::SubnetIdMalformed(id.to_string()),
            IdKind::SecurityGroup => Ec2Error::GroupIdMalformed(id.to_string()),
            IdKind::Allocation => Ec2Error::AllocationIdMalformed(id.to_string()),
            IdKind::Association => Ec2Error::AssociationIdMalformed(id.to_string()),
            IdKind::Reservation | IdKind::KeyPair => Ec2Error::InvalidId(id.to_string()),
        })
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource_type())
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`), retrying on interruption.
pub fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that outlives the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("getrandom failed: {error}");
        }
        filled += n as usize;
    }
}

/// A random token of `bytes` bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        for kind in [
            IdKind::Instance,
            IdKind::Reservation,
            IdKind::Volume,
            IdKind::Image,
            IdKind::KeyPair,
        ] {
            let a = kind.generate();
            let b = kind.generate();
            assert_eq!(a.len(), kind.prefix().len() + 17, "{a}");
            assert!(kind.is_well_formed(&a), "{a}");
            assert_ne!(a, b);
            assert_eq!(IdKind::of(&a), Some(kind));
        }
    }

    #[test]
    fn malformed_ids_are_refused_with_the_kind_code() {
        for bad in [
            "i-",
            "i-123",
            "i-0123456789ABCDEF0",
            "x-0123456789abcdef0",
            "i-0123456789abcdefg",
        ] {
            assert_eq!(
                IdKind::Instance.validate(bad).unwrap_err().code(),
                "InvalidInstanceID.Malformed"
            );
        }
        assert!(IdKind::Instance.validate("i-0123456789abcdef0").is_ok());
        assert!(IdKind::Instance.validate("i-0123abcd").is_ok());
        assert_eq!(
            IdKind::Image.validate("ami-zz").unwrap_err().code(),
            "InvalidAMIID.Malformed"
        );
        assert_eq!(
            IdKind::Volume.validate("vol-1").unwrap_err().code(),
            "InvalidVolumeID.Malformed"
        );
    }
}
