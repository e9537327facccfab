//! EBS volume types: their size, IOPS and throughput rules, and the token-bucket limits
//! hearth-vmm enforces for each (see `hearth_devices::rate_limiter`).
//!
//! | type     | size GiB     | IOPS                                  | throughput MiB/s                   |
//! |----------|--------------|---------------------------------------|------------------------------------|
//! | gp3      | 1–16384      | 3000 (3000–16000, ≤ 500/GiB)          | 125 (125–1000, ≤ IOPS/4)           |
//! | gp2      | 1–16384      | 3/GiB (100–16000), bursts to 3000     | 250                                |
//! | io1      | 4–16384      | given (100–64000, ≤ 50/GiB)           | IOPS × 256 KiB, ≤ 1000             |
//! | io2      | 4–16384      | given (100–64000, ≤ 500/GiB)          | IOPS × 256 KiB, ≤ 4000             |
//! | st1      | 125–16384    | 500                                   | 40/TiB (≤ 500), bursts 250/TiB      |
//! | sc1      | 125–16384    | 250                                   | 12/TiB (≤ 250), bursts 80/TiB       |
//! | standard | 1–1024       | 200, bursts to a few hundred          | 90                                 |
//!
//! The buckets refill at the baseline and hold one second of the burst rate (gp2, st1, sc1,
//! standard), or one second of the baseline (the provisioned types), so a request stream
//! settles at the baseline within a second.

use crate::error::{Ec2Error, Ec2Result};

/// Every volume type.
pub const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

const MIB: u64 = 1 << 20;

/// Token-bucket limits of one disk (the VMM's `RateLimitConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskLimits {
    /// Requests per second.
    pub ops_per_sec: u64,
    /// Request bucket size.
    pub ops_burst: u64,
    /// Bytes per second.
    pub bytes_per_sec: u64,
    /// Byte bucket size.
    pub bytes_burst: u64,
}

/// A volume's performance settings after defaults: `(iops, throughput MiB/s)` as EC2 shows
/// them (`None` where the type has no such setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Provisioned or baseline IOPS.
    pub iops: Option<u32>,
    /// Throughput (gp3 only).
    pub throughput_mibps: Option<u32>,
}

fn invalid(message: String) -> Ec2Error {
    Ec2Error::InvalidParameterValue(message)
}

/// Checks a volume type, size, IOPS and throughput together, filling in defaults.
pub fn check(volume_type: &str, size_gib: u64, iops: Option<u32>, throughput: Option<u32>) -> Ec2Result<Shape> {
    let (min_size, max_size) = match volume_type {
        "gp3" | "gp2" => (1, 16_384),
        "io1" | "io2" => (4, 16_384),
        "st1" | "sc1" => (125, 16_384),
        "standard" => (1, 1024),
        other => {
            return Err(invalid(format!(
                "Invalid volume type '{other}': one of {}",
                VOLUME_TYPES.join(", ")
            )))
        }
    };
    if size_gib < min_size || size_gib > max_size {
        return Err(invalid(format!(
            "Volume of {size_gib} GiB: a {volume_type} volume is {min_size} to {max_size} GiB"
        )));
    }
    if throughput.is_some() && volume_type != "gp3" {
        return Err(Ec2Error::InvalidParameterCombination(format!(
            "Throughput is only valid for gp3 volumes, not {volume_type}"
        )));
    }
    match volume_type {
        "gp3" => {
            let iops = iops.unwrap_or(3000);
            if !(3000..=16_000).contains(&iops) {
                return Err(invalid(format!("gp3 IOPS {iops}: 3000 to 16000")));
            }
            if iops > 3000 && u64::from(iops) > 500 * size_gib {
                return Err(invalid(format!(
                    "gp3 IOPS {iops}: at most 500 per GiB ({} for {size_gib} GiB)",
                    500 * size_gib
                )));
            }
            let throughput = throughput.unwrap_or(125);
            if !(125..=1000).contains(&throughput) {
                return Err(invalid(format!("gp3 throughput {throughput} MiB/s: 125 to 1000")));
            }
            if throughput > 125 && throughput > iops / 4 {
                return Err(invalid(format!(
                    "gp3 throughput {throughput} MiB/s: at most IOPS/4 ({})",
                    iops / 4
                )));
            }
            Ok(Shape {
                iops: Some(iops),
                throughput_mibps: Some(throughput),
            })
        }
        "io1" | "io2" => {
            let Some(iops) = iops else {
                return Err(Ec2Error::MissingParameter(format!("Iops (required for {volume_type})")));
            };
            let per_gib = if volume_type == "io1" { 50 } else { 500 };
            if !(100..=64_000).contains(&iops) || u64::from(iops) > per_gib * size_gib {
                return Err(invalid(format!(
                    "{volume_type} IOPS {iops}: 100 to 64000 and at most {per_gib} per GiB"
                )));
            }
            Ok(Shape {
                iops: Some(iops),
                throughput_mibps: None,
            })
        }
        _ => {
            if iops.is_some() {
                return Err(Ec2Error::InvalidParameterCombination(format!(
                    "Iops is not valid for {volume_type} volumes"
                )));
            }
            let baseline = match volume_type {
                "gp2" => (3 * size_gib).clamp(100, 16_000) as u32,
                "st1" => 500,
                "sc1" => 250,
                _ => 200,
            };
            Ok(Shape {
                iops: Some(baseline),
                throughput_mibps: None,
            })
        }
    }
}

/// The token buckets that make a volume of this type, size and shape behave like it.
pub fn limits(volume_type: &str, size_gib: u64, shape: Shape) -> DiskLimits {
    let iops = u64::from(shape.iops.unwrap_or(0));
    let tib = size_gib as f64 / 1024.0;
    let per_tib = |per: f64, max: f64| ((per * tib).min(max) * MIB as f64) as u64;
    match volume_type {
        "gp3" => {
            let bytes = u64::from(shape.throughput_mibps.unwrap_or(125)) * MIB;
            DiskLimits {
                ops_per_sec: iops,
                ops_burst: iops,
                bytes_per_sec: bytes,
                bytes_burst: bytes,
            }
        }
        "gp2" => DiskLimits {
            ops_per_sec: iops,
            ops_burst: iops.max(3000),
            bytes_per_sec: 250 * MIB,
            bytes_burst: 250 * MIB,
        },
        "io1" | "io2" => {
            let cap = if volume_type == "io1" { 1000 } else { 4000 };
            let bytes = (iops * 256 * 1024).min(cap * MIB);
            DiskLimits {
                ops_per_sec: iops,
                ops_burst: iops,
                bytes_per_sec: bytes,
                bytes_burst: bytes,
            }
        }
        "st1" => DiskLimits {
            ops_per_sec: 500,
            ops_burst: 500,
            bytes_per_sec: per_tib(40.0, 500.0).max(MIB),
            bytes_burst: per_tib(250.0, 500.0).max(MIB),
        },
        "sc1" => DiskLimits {
            ops_per_sec: 250,
            ops_burst: 250,
            bytes_per_sec: per_tib(12.0, 250.0).max(MIB),
            bytes_burst: per_tib(80.0, 250.0).max(MIB),
        },
        _ => DiskLimits {
            ops_per_sec: 200,
            ops_burst: 400,
            bytes_per_sec: 90 * MIB,
            bytes_burst: 90 * MIB,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_ec2() {
        assert_eq!(
            check("gp3", 8, None, None).unwrap(),
            Shape {
                iops: Some(3000),
                throughput_mibps: Some(125)
            }
        );
        assert_eq!(check("gp2", 10, None, None).unwrap().iops, Some(100));
        assert_eq!(check("gp2", 1000, None, None).unwrap().iops, Some(3000));
        assert_eq!(check("io2", 10, Some(1000), None).unwrap().iops, Some(1000));
        assert_eq!(check("st1", 125, None, None).unwrap().iops, Some(500));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert_eq!(check("gp4", 8, None, None).unwrap_err().code(), "InvalidParameterValue");
        assert_eq!(check("gp3", 0, None, None).unwrap_err().code(), "InvalidParameterValue");
        assert_eq!(
            check("gp3", 8, Some(2000), None).unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(
            check("gp3", 8, Some(8000), None).unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(check("io1", 8, None, None).unwrap_err().code(), "MissingParameter");
        assert_eq!(
            check("io1", 8, Some(1000), None).unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(
            check("gp2", 8, None, Some(200)).unwrap_err().code(),
            "InvalidParameterCombination"
        );
        assert_eq!(
            check("st1", 100, None, None).unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(
            check("gp3", 8, Some(3000), Some(1000)).unwrap_err().code(),
            "InvalidParameterValue"
        );
    }

    #[test]
    fn limits_match_the_shape() {
        let gp3 = limits("gp3", 8, check("gp3", 8, None, None).unwrap());
        assert_eq!((gp3.ops_per_sec, gp3.bytes_per_sec), (3000, 125 * MIB));
        let io2 = limits("io2", 100, check("io2", 100, Some(2000), None).unwrap());
        assert_eq!((io2.ops_per_sec, io2.bytes_per_sec), (2000, 500 * MIB));
        let st1 = limits("st1", 2048, check("st1", 2048, None, None).unwrap());
        assert_eq!((st1.bytes_per_sec, st1.bytes_burst), (80 * MIB, 500 * MIB));
    }
}
