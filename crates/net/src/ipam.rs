//! IP address management for VPC subnets, with EC2's rules.
//!
//! - A VPC's CIDR is /16 to /28; a subnet's CIDR is /16 to /28, inside its VPC's CIDR, and
//!   overlaps no other subnet of the VPC.
//! - In every subnet EC2 reserves five addresses: the network address, `.1` (the router),
//!   `.2` (the DNS resolver), `.3` (reserved for future use) and the broadcast address.
//!   Instances get the others; `AvailableIpAddressCount` is the size minus five minus the
//!   addresses in use.
//! - Each network interface gets a locally administered unicast MAC (`02:…`, as Nitro's
//!   `0x02`/`0x06`/`0x0a`/`0x0e` prefixes are), random so that MACs stay unique across
//!   hosts and VPCs without coordination.
//!
//! hearthd owns the allocations (it is the only writer of the region's state); this module is
//! the arithmetic.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::model::{Ipv4Cidr, MacAddr};

/// Smallest prefix length (largest network) of a VPC or subnet.
pub const MIN_PREFIX: u8 = 16;
/// Largest prefix length (smallest network) of a VPC or subnet.
pub const MAX_PREFIX: u8 = 28;
/// Addresses EC2 reserves in every subnet.
pub const RESERVED_PER_SUBNET: u64 = 5;

/// Why a CIDR or an address is refused (the message EC2 would give; the caller picks the code:
/// `InvalidVpc.Range`, `InvalidSubnet.Range`, `InvalidSubnet.Conflict`, `InvalidIPAddress.InUse`…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The prefix is outside /16–/28.
    #[error("The CIDR '{0}' is invalid: the prefix must be between /{MIN_PREFIX} and /{MAX_PREFIX}")]
    Range(Ipv4Cidr),
    /// The subnet is not inside its VPC.
    #[error("The CIDR '{subnet}' is not within the VPC's CIDR '{vpc}'")]
    OutsideVpc {
        /// The subnet's CIDR.
        subnet: Ipv4Cidr,
        /// The VPC's CIDR.
        vpc: Ipv4Cidr,
    },
    /// The subnet overlaps another subnet of the VPC.
    #[error("The CIDR '{subnet}' conflicts with another subnet ({other})")]
    Conflict {
        /// The new CIDR.
        subnet: Ipv4Cidr,
        /// The subnet it overlaps.
        other: Ipv4Cidr,
    },
    /// The address is not one an instance may have in this subnet.
    #[error("Address {address} is not an assignable address of subnet {subnet} (reserved or outside it)")]
    NotAssignable {
        /// The address asked for.
        address: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Cidr,
    },
    /// The address is taken.
    #[error("Address {0} is in use")]
    InUse(Ipv4Addr),
    /// No address is left.
    #[error("There are not enough free addresses in subnet {0}")]
    Exhausted(Ipv4Cidr),
}

/// Checks a VPC's CIDR block.
pub fn check_vpc_cidr(cidr: Ipv4Cidr) -> Result<(), IpamError> {
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&cidr.prefix()) {
        return Err(IpamError::Range(cidr));
    }
    Ok(())
}

/// Whether two networks share an address.
pub fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// Checks a new subnet's CIDR against its VPC and the VPC's other subnets.
pub fn check_subnet_cidr(subnet: Ipv4Cidr, vpc: Ipv4Cidr, others: &[Ipv4Cidr]) -> Result<(), IpamError> {
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&subnet.prefix()) {
        return Err(IpamError::Range(subnet));
    }
    if !vpc.contains(&subnet) {
        return Err(IpamError::OutsideVpc { subnet, vpc });
    }
    if let Some(other) = others.iter().find(|other| overlaps(subnet, **other)) {
        return Err(IpamError::Conflict { subnet, other: *other });
    }
    Ok(())
}

/// Addresses in `cidr` (2^(32-prefix)).
pub fn size(cidr: Ipv4Cidr) -> u64 {
    1u64 << (32 - u32::from(cidr.prefix()))
}

/// The subnet's router (`.1` of the network): the guests' default gateway.
pub fn gateway(subnet: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.addr()) + 1)
}

/// The subnet's DNS resolver address (`.2`).
pub fn dns_resolver(subnet: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.addr()) + 2)
}

/// The broadcast address.
pub fn broadcast(subnet: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.addr()) + (size(subnet) - 1) as u32)
}

/// Whether `address` may be given to an instance in `subnet`: inside it, not one of the five
/// reserved addresses.
pub fn assignable(subnet: Ipv4Cidr, address: Ipv4Addr) -> bool {
    let base = u64::from(u32::from(subnet.addr()));
    let a = u64::from(u32::from(address));
    a >= base + 4 && a < base + size(subnet) - 1
}

/// `AvailableIpAddressCount`: assignable addresses minus those in use.
pub fn available_count(subnet: Ipv4Cidr, in_use: &BTreeSet<Ipv4Addr>) -> u64 {
    let used = in_use.iter().filter(|a| assignable(subnet, **a)).count() as u64;
    size(subnet) - RESERVED_PER_SUBNET - used
}

/// The lowest assignable address of `subnet` not in `in_use`.
pub fn allocate(subnet: Ipv4Cidr, in_use: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
    let base = u32::from(subnet.addr());
    let last = base + (size(subnet) - 2) as u32;
    (base + 4..=last)
        .map(Ipv4Addr::from)
        .find(|a| !in_use.contains(a))
        .ok_or(IpamError::Exhausted(subnet))
}

/// `address` for an instance that asked for it (`PrivateIpAddress`).
pub fn allocate_specific(
    subnet: Ipv4Cidr,
    address: Ipv4Addr,
    in_use: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    if !assignable(subnet, address) {
        return Err(IpamError::NotAssignable { address, subnet });
    }
    if in_use.contains(&address) {
        return Err(IpamError::InUse(address));
    }
    Ok(address)
}

/// A random locally administered unicast MAC (`02:xx:xx:xx:xx:xx`) not in `in_use`.
pub fn random_mac(in_use: &BTreeSet<MacAddr>) -> MacAddr {
    loop {
        let mut bytes = [0u8; 6];
        fill_random(&mut bytes[1..]);
        bytes[0] = 0x02;
        let mac = MacAddr(bytes);
        if !in_use.contains(&mac) {
            return mac;
        }
    }
}

/// Fills `buf` from the kernel's random source, retrying on interruption.
fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the whole call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::Interrupted,
                "getrandom failed: {error}"
            );
            continue;
        }
        filled += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn vpc_and_subnet_cidrs_follow_ec2() {
        assert!(check_vpc_cidr(cidr("10.0.0.0/16")).is_ok());
        assert!(check_vpc_cidr(cidr("10.0.0.0/28")).is_ok());
        assert_eq!(
            check_vpc_cidr(cidr("10.0.0.0/8")),
            Err(IpamError::Range(cidr("10.0.0.0/8")))
        );
        assert!(check_vpc_cidr(cidr("10.0.0.0/29")).is_err());
        let vpc = cidr("10.0.0.0/16");
        let others = [cidr("10.0.0.0/24"), cidr("10.0.1.0/24")];
        assert!(check_subnet_cidr(cidr("10.0.2.0/24"), vpc, &others).is_ok());
        assert_eq!(
            check_subnet_cidr(cidr("10.0.1.128/25"), vpc, &others),
            Err(IpamError::Conflict {
                subnet: cidr("10.0.1.128/25"),
                other: cidr("10.0.1.0/24")
            })
        );
        assert_eq!(
            check_subnet_cidr(cidr("10.0.0.0/16"), vpc, &others),
            Err(IpamError::Conflict {
                subnet: cidr("10.0.0.0/16"),
                other: cidr("10.0.0.0/24")
            }),
            "a subnet as big as the VPC overlaps the others"
        );
        assert!(matches!(
            check_subnet_cidr(cidr("10.1.0.0/24"), vpc, &others),
            Err(IpamError::OutsideVpc { .. })
        ));
        assert!(matches!(
            check_subnet_cidr(cidr("10.0.3.0/29"), vpc, &others),
            Err(IpamError::Range(_))
        ));
    }

    #[test]
    fn five_addresses_are_reserved_per_subnet() {
        let subnet = cidr("10.0.1.0/24");
        assert_eq!(gateway(subnet), ip("10.0.1.1"));
        assert_eq!(dns_resolver(subnet), ip("10.0.1.2"));
        assert_eq!(broadcast(subnet), ip("10.0.1.255"));
        for reserved in ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255", "10.0.2.4"] {
            assert!(!assignable(subnet, ip(reserved)), "{reserved}");
        }
        assert!(assignable(subnet, ip("10.0.1.4")) && assignable(subnet, ip("10.0.1.254")));
        assert_eq!(available_count(subnet, &BTreeSet::new()), 251);
        assert_eq!(available_count(cidr("10.0.0.0/28"), &BTreeSet::new()), 11);
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_until_exhausted() {
        let subnet = cidr("192.168.0.0/28");
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Ok(address) = allocate(subnet, &used) {
            used.insert(address);
            got.push(address);
        }
        assert_eq!(got.first(), Some(&ip("192.168.0.4")));
        assert_eq!(got.last(), Some(&ip("192.168.0.14")));
        assert_eq!(got.len(), 11);
        assert_eq!(allocate(subnet, &used), Err(IpamError::Exhausted(subnet)));
        assert_eq!(available_count(subnet, &used), 0);
        used.remove(&ip("192.168.0.9"));
        assert_eq!(
            allocate(subnet, &used),
            Ok(ip("192.168.0.9")),
            "freed addresses come back"
        );
        assert_eq!(
            allocate_specific(subnet, ip("192.168.0.10"), &used),
            Err(IpamError::InUse(ip("192.168.0.10")))
        );
        assert!(matches!(
            allocate_specific(subnet, ip("192.168.0.2"), &used),
            Err(IpamError::NotAssignable { .. })
        ));
        assert_eq!(
            allocate_specific(subnet, ip("192.168.0.9"), &used),
            Ok(ip("192.168.0.9"))
        );
    }

    #[test]
    fn macs_are_local_unicast_and_unique() {
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            let mac = random_mac(&seen);
            assert_eq!(mac.0[0], 0x02);
            assert!(!mac.is_multicast());
            assert!(seen.insert(mac), "duplicate {mac:?}");
        }
    }
}
