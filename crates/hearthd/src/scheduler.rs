//! Placement: the host with the most free vCPUs (then memory) that fits, which spreads
//! instances across hosts.

/// Free capacity of one live host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoom {
    /// The host.
    pub host_id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// vCPUs not used by instances.
    pub free_vcpus: i64,
    /// Memory not used by instances.
    pub free_memory_mib: i64,
}

/// Picks a host for an instance of `vcpus`/`memory_mib` (in `zone` if given) and takes the
/// room from it; `None` when no host fits.
pub fn place(rooms: &mut [HostRoom], vcpus: u32, memory_mib: u64, zone: Option<&str>) -> Option<String> {
    let (vcpus, memory) = (i64::from(vcpus), memory_mib as i64);
    let best = rooms
        .iter_mut()
        .filter(|room| zone.is_none_or(|zone| room.availability_zone == zone))
        .filter(|room| room.free_vcpus >= vcpus && room.free_memory_mib >= memory)
        .max_by(|a, b| {
            (a.free_vcpus, a.free_memory_mib)
                .cmp(&(b.free_vcpus, b.free_memory_mib))
                .then_with(|| b.host_id.cmp(&a.host_id))
        })?;
    best.free_vcpus -= vcpus;
    best.free_memory_mib -= memory;
    Some(best.host_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str, zone: &str, vcpus: i64, memory: i64) -> HostRoom {
        HostRoom {
            host_id: id.into(),
            availability_zone: zone.into(),
            free_vcpus: vcpus,
            free_memory_mib: memory,
        }
    }

    #[test]
    fn spreads_and_respects_zone_and_room() {
        let mut rooms = vec![
            room("h-a", "z1", 4, 4096),
            room("h-b", "z1", 4, 4096),
            room("h-c", "z2", 2, 1024),
        ];
        let first = place(&mut rooms, 2, 1024, Some("z1")).unwrap();
        let second = place(&mut rooms, 2, 1024, Some("z1")).unwrap();
        assert_ne!(first, second, "spread over both hosts of the zone");
        assert_eq!(place(&mut rooms, 2, 1024, Some("z2")).unwrap(), "h-c");
        assert_eq!(place(&mut rooms, 2, 1024, Some("z2")), None);
        assert_eq!(place(&mut rooms, 2, 8192, None), None);
    }
}
