//! Flag values as aws takes them (shorthand, JSON, `file://`) turned into `hearth.v1` request parts.

use hearth_api::v1::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceMetadataOptions, IpPermission, IpRange, Tag, TagSpecification,
    UserIdGroupPair,
};
use serde_json::{Map, Value};

use crate::error::CliError;
use crate::shorthand;

/// The text of a flag value: the file's contents for `file://PATH` (and `fileb://PATH`), else the value itself.
pub fn load_text(flag: &str, value: &str) -> Result<String, CliError> {
    match paramfile_path(value) {
        Some(path) => std::fs::read_to_string(path).map_err(|e| unreadable(flag, value, e)),
        None => Ok(value.to_owned()),
    }
}

/// The bytes of a blob flag value (`--user-data`): a `file://`/`fileb://` file's bytes, else the text itself.
pub fn load_blob(flag: &str, value: &str) -> Result<Vec<u8>, CliError> {
    match paramfile_path(value) {
        Some(path) => std::fs::read(path).map_err(|e| unreadable(flag, value, e)),
        None => Ok(value.as_bytes().to_vec()),
    }
}

fn paramfile_path(value: &str) -> Option<&str> {
    value.strip_prefix("file://").or_else(|| value.strip_prefix("fileb://"))
}

fn unreadable(flag: &str, value: &str, error: std::io::Error) -> CliError {
    CliError::parameter(flag, format!("Unable to load paramfile {value}: {error}"))
}

/// The structures given to a list flag, each value shorthand (`Key=a,Value=b`) or JSON (an object, or an
/// array of objects), optionally from `file://`.
pub fn structures(flag: &str, values: &[String]) -> Result<Vec<Value>, CliError> {
    let mut out = Vec::new();
    for value in values {
        let text = load_text(flag, value)?;
        let trimmed = text.trim();
        if trimmed.starts_with('[') || trimmed.starts_with('{') {
            let json: Value = serde_json::from_str(trimmed)
                .map_err(|e| CliError::parameter(flag, format!("Invalid JSON: {e}\nJSON received: {trimmed}")))?;
            match json {
                Value::Array(items) => out.extend(items),
                object => out.push(object),
            }
        } else {
            let map = shorthand::parse(trimmed).map_err(|e| CliError::parameter(flag, e))?;
            out.push(Value::Object(map));
        }
    }
    Ok(out)
}

/// One structure flag (`--placement AvailabilityZone=az1`).
pub fn structure(flag: &str, value: &str) -> Result<Value, CliError> {
    let mut items = structures(flag, std::slice::from_ref(&value.to_owned()))?;
    match items.len() {
        1 => Ok(items.remove(0)),
        _ => Err(CliError::parameter(flag, "expected one structure, not a list")),
    }
}

/// The members of one structure, taken out by name and type; `finish` refuses the names left over.
struct Fields<'a> {
    flag: &'a str,
    path: String,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(flag: &'a str, path: String, value: Value) -> Result<Self, CliError> {
        match value {
            Value::Object(map) => Ok(Fields { flag, path, map }),
            other => Err(CliError::parameter(
                flag,
                format!("Invalid type for parameter {path}, value: {other}, valid types: structure"),
            )),
        }
    }

    fn invalid(&self, key: &str, value: &Value, valid: &str) -> CliError {
        CliError::parameter(
            self.flag,
            format!(
                "Invalid type for parameter {}.{key}, value: {value}, valid types: {valid}",
                self.path
            ),
        )
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, CliError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(other) => Err(self.invalid(key, &other, "string")),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<Option<bool>, CliError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(self.invalid(key, &other, "boolean")),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<i64>, CliError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
            Some(other) => Err(self.invalid(key, &other, "integer")),
        }
    }

    fn list(&mut self, key: &str) -> Result<Option<Vec<Value>>, CliError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(single) => Ok(Some(vec![single])),
        }
    }

    fn structure(&mut self, key: &str) -> Result<Option<Fields<'a>>, CliError> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(value) => Fields::new(self.flag, format!("{}.{key}", self.path), value).map(Some),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T, CliError> {
        value.ok_or_else(|| {
            CliError::parameter(
                self.flag,
                format!("Missing required parameter in {}: \"{key}\"", self.path),
            )
        })
    }

    fn finish(self, allowed: &[&str]) -> Result<(), CliError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(unknown) => Err(CliError::parameter(
                self.flag,
                format!(
                    "Unknown parameter in {}: \"{unknown}\", must be one of: {}",
                    self.path,
                    allowed.join(", ")
                ),
            )),
        }
    }
}

fn as_i32(flag: &str, what: &str, value: i64) -> Result<i32, CliError> {
    i32::try_from(value).map_err(|_| CliError::parameter(flag, format!("{what} {value} is out of range")))
}

/// `--tags Key=a,Value=b ...` (a missing `Value` is empty: for delete-tags, "whatever the value").
pub fn tags(flag: &str, values: &[String]) -> Result<Vec<Tag>, CliError> {
    structures(flag, values)?
        .into_iter()
        .enumerate()
        .map(|(i, value)| tag(flag, format!("Tags[{i}]"), value))
        .collect()
}

fn tag(flag: &str, path: String, value: Value) -> Result<Tag, CliError> {
    let mut fields = Fields::new(flag, path, value)?;
    let key = fields.string("Key")?;
    let key = fields.required("Key", key)?;
    let value = fields.string("Value")?.unwrap_or_default();
    fields.finish(&["Key", "Value"])?;
    Ok(Tag { key, value })
}

/// `--filters Name=instance-state-name,Values=running,stopped ...`.
pub fn filters(flag: &str, values: &[String]) -> Result<Vec<Filter>, CliError> {
    let mut out = Vec::new();
    for (i, value) in structures(flag, values)?.into_iter().enumerate() {
        let mut fields = Fields::new(flag, format!("Filters[{i}]"), value)?;
        let name = fields.string("Name")?;
        let name = fields.required("Name", name)?;
        let mut filter_values = Vec::new();
        for (j, v) in fields.list("Values")?.unwrap_or_default().into_iter().enumerate() {
            match v {
                Value::String(s) => filter_values.push(s),
                v @ (Value::Number(_) | Value::Bool(_)) => filter_values.push(v.to_string()),
                other => {
                    return Err(CliError::parameter(
                        flag,
                        format!(
                            "Invalid type for parameter Filters[{i}].Values[{j}], value: {other}, valid types: string"
                        ),
                    ))
                }
            }
        }
        fields.finish(&["Name", "Values"])?;
        out.push(Filter {
            name,
            values: filter_values,
        });
    }
    Ok(out)
}

/// `--tag-specifications 'ResourceType=instance,Tags=[{Key=Name,Value=web}]' ...`.
pub fn tag_specifications(flag: &str, values: &[String]) -> Result<Vec<TagSpecification>, CliError> {
    let mut out = Vec::new();
    for (i, value) in structures(flag, values)?.into_iter().enumerate() {
        let path = format!("TagSpecifications[{i}]");
        let mut fields = Fields::new(flag, path.clone(), value)?;
        let resource_type = fields.string("ResourceType")?;
        let resource_type = fields.required("ResourceType", resource_type)?;
        let tags = fields
            .list("Tags")?
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, tag_value)| tag(flag, format!("{path}.Tags[{j}]"), tag_value))
            .collect::<Result<Vec<_>, _>>()?;
        fields.finish(&["ResourceType", "Tags"])?;
        out.push(TagSpecification { resource_type, tags });
    }
    Ok(out)
}

/// `--block-device-mappings` as aws JSON or `DeviceName=/dev/xvda,Ebs={VolumeSize=8,DeleteOnTermination=false}`.
pub fn block_device_mappings(flag: &str, values: &[String]) -> Result<Vec<BlockDeviceMapping>, CliError> {
    let mut out = Vec::new();
    for (i, value) in structures(flag, values)?.into_iter().enumerate() {
        let mut fields = Fields::new(flag, format!("BlockDeviceMappings[{i}]"), value)?;
        let device_name = fields.string("DeviceName")?;
        let device_name = fields.required("DeviceName", device_name)?;
        let virtual_name = fields.string("VirtualName")?.unwrap_or_default();
        // aws passes NoDevice as an empty string: its presence is what counts.
        let no_device = fields.string("NoDevice")?.is_some();
        let ebs = match fields.structure("Ebs")? {
            None => None,
            Some(mut ebs) => {
                let device = EbsBlockDevice {
                    delete_on_termination: ebs.boolean("DeleteOnTermination")?,
                    volume_size_gib: ebs.integer("VolumeSize")?,
                    volume_type: ebs.string("VolumeType")?.unwrap_or_default(),
                    iops: ebs.integer("Iops")?.map(|v| as_i32(flag, "Iops", v)).transpose()?,
                    throughput_mibps: ebs
                        .integer("Throughput")?
                        .map(|v| as_i32(flag, "Throughput", v))
                        .transpose()?,
                    snapshot_id: ebs.string("SnapshotId")?.unwrap_or_default(),
                    encrypted: ebs.boolean("Encrypted")?.unwrap_or(false),
                };
                ebs.finish(&[
                    "DeleteOnTermination",
                    "Iops",
                    "SnapshotId",
                    "VolumeSize",
                    "VolumeType",
                    "Throughput",
                    "Encrypted",
                ])?;
                Some(device)
            }
        };
        fields.finish(&["DeviceName", "VirtualName", "Ebs", "NoDevice"])?;
        out.push(BlockDeviceMapping {
            device_name,
            ebs,
            virtual_name,
            no_device,
        });
    }
    Ok(out)
}

/// `--ip-permissions` as aws JSON or
/// `IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8}],UserIdGroupPairs=[{GroupId=sg-1}]`.
pub fn ip_permissions(flag: &str, values: &[String]) -> Result<Vec<IpPermission>, CliError> {
    let mut out = Vec::new();
    for (i, value) in structures(flag, values)?.into_iter().enumerate() {
        let path = format!("IpPermissions[{i}]");
        let mut fields = Fields::new(flag, path.clone(), value)?;
        let ip_protocol = fields.string("IpProtocol")?;
        let ip_protocol = fields.required("IpProtocol", ip_protocol)?;
        let from_port = fields
            .integer("FromPort")?
            .map(|v| as_i32(flag, "FromPort", v))
            .transpose()?;
        let to_port = fields
            .integer("ToPort")?
            .map(|v| as_i32(flag, "ToPort", v))
            .transpose()?;
        let mut ip_ranges = Vec::new();
        for (j, range) in fields.list("IpRanges")?.unwrap_or_default().into_iter().enumerate() {
            let mut range = Fields::new(flag, format!("{path}.IpRanges[{j}]"), range)?;
            let cidr_ip = range.string("CidrIp")?;
            let cidr_ip = range.required("CidrIp", cidr_ip)?;
            let description = range.string("Description")?.unwrap_or_default();
            range.finish(&["CidrIp", "Description"])?;
            ip_ranges.push(IpRange { cidr_ip, description });
        }
        let mut user_id_group_pairs = Vec::new();
        let pairs = fields.list("UserIdGroupPairs")?.unwrap_or_default();
        for (j, pair) in pairs.into_iter().enumerate() {
            let mut pair = Fields::new(flag, format!("{path}.UserIdGroupPairs[{j}]"), pair)?;
            let group_id = pair.string("GroupId")?;
            let group_id = pair.required("GroupId", group_id)?;
            let user_id = pair.string("UserId")?.unwrap_or_default();
            let description = pair.string("Description")?.unwrap_or_default();
            pair.finish(&["GroupId", "UserId", "Description"])?;
            user_id_group_pairs.push(UserIdGroupPair {
                group_id,
                description,
                user_id,
            });
        }
        fields.finish(&["IpProtocol", "FromPort", "ToPort", "IpRanges", "UserIdGroupPairs"])?;
        out.push(IpPermission {
            ip_protocol,
            from_port,
            to_port,
            ip_ranges,
            user_id_group_pairs,
        });
    }
    Ok(out)
}

/// `--protocol` of the security-group shortcut flags, as aws checks it: tcp, udp, icmp, all (sent as -1), -1
/// or a protocol number 0..255.
pub fn protocol(flag: &str, value: &str) -> Result<String, CliError> {
    let value = value.trim().to_ascii_lowercase();
    match value.as_str() {
        "tcp" | "udp" | "icmp" | "-1" => Ok(value),
        "all" => Ok("-1".into()),
        number if number.parse::<u8>().is_ok() => Ok(number.to_owned()),
        _ => Err(CliError::parameter(
            flag,
            format!(
                "protocol parameter should be one of: tcp|udp|icmp|all or any valid protocol number, not {value:?}"
            ),
        )),
    }
}

/// `--port` of the security-group shortcut flags → (from, to): `22`, `1000-2000`, `-1` or `all` (every port).
/// For icmp the port is the type: `8` is type 8 with any code, `8-0` type 8 code 0.
pub fn port_range(flag: &str, value: &str, icmp: bool) -> Result<(i32, i32), CliError> {
    let value = value.trim();
    if value == "-1" || value.eq_ignore_ascii_case("all") {
        return Ok((-1, -1));
    }
    let invalid = || {
        CliError::parameter(
            flag,
            format!("port parameter should be of the form <from[-to]> (e.g. 22 or 22-25), not {value:?}"),
        )
    };
    let number = |s: &str| s.trim().parse::<i32>().map_err(|_| invalid());
    match value.split_once('-') {
        Some((from, to)) => Ok((number(from)?, number(to)?)),
        None if icmp => Ok((number(value)?, -1)),
        None => {
            let port = number(value)?;
            Ok((port, port))
        }
    }
}

/// `--metadata-options HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=2` (or JSON).
pub fn metadata_options(flag: &str, value: &str) -> Result<InstanceMetadataOptions, CliError> {
    let mut fields = Fields::new(flag, "MetadataOptions".into(), structure(flag, value)?)?;
    let http_tokens = fields.string("HttpTokens")?.unwrap_or_default();
    let http_endpoint = fields.string("HttpEndpoint")?.unwrap_or_default();
    let hop_limit = fields.integer("HttpPutResponseHopLimit")?;
    let http_put_response_hop_limit = hop_limit
        .map(|v| as_i32(flag, "HttpPutResponseHopLimit", v))
        .transpose()?
        .unwrap_or(0);
    fields.finish(&["HttpTokens", "HttpEndpoint", "HttpPutResponseHopLimit"])?;
    Ok(InstanceMetadataOptions {
        http_tokens,
        http_endpoint,
        http_put_response_hop_limit,
    })
}

/// `--placement AvailabilityZone=az1` (or JSON): the availability zone.
pub fn placement_zone(flag: &str, value: &str) -> Result<String, CliError> {
    let mut fields = Fields::new(flag, "Placement".into(), structure(flag, value)?)?;
    let zone = fields.string("AvailabilityZone")?.unwrap_or_default();
    fields.finish(&["AvailabilityZone"])?;
    Ok(zone)
}

/// A scalar attribute value, bare (`t3.large`) or aws-style (`Value=t3.large`, `{"Value": "t3.large"}`).
pub fn attribute_value(flag: &str, value: &str) -> Result<String, CliError> {
    let trimmed = value.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with("Value=") {
        let mut fields = Fields::new(flag, "AttributeValue".into(), structure(flag, value)?)?;
        let inner = fields.string("Value")?;
        let inner = fields.required("Value", inner)?;
        fields.finish(&["Value"])?;
        Ok(inner)
    } else {
        Ok(value.to_owned())
    }
}

/// `--count N` or `--count MIN:MAX` → (min, max).
pub fn count(flag: &str, value: &str) -> Result<(i32, i32), CliError> {
    let number = |s: &str| {
        s.trim().parse::<i32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            CliError::parameter(
                flag,
                format!("expected N or MIN:MAX (positive integers), got {value:?}"),
            )
        })
    };
    match value.split_once(':') {
        Some((min, max)) => {
            let (min, max) = (number(min)?, number(max)?);
            if min > max {
                return Err(CliError::parameter(
                    flag,
                    format!("minimum {min} is above maximum {max}"),
                ));
            }
            Ok((min, max))
        }
        None => {
            let n = number(value)?;
            Ok((n, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("hearth-cli-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn tags_in_shorthand_and_json() {
        let parsed = tags(
            "--tags",
            &strings(&["Key=Name,Value=web", r#"[{"Key":"env","Value":"prod"}]"#]),
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                Tag {
                    key: "Name".into(),
                    value: "web".into()
                },
                Tag {
                    key: "env".into(),
                    value: "prod".into()
                }
            ]
        );
        let key_only = tags("--tags", &strings(&["Key=owner"])).unwrap();
        assert_eq!(
            key_only,
            vec![Tag {
                key: "owner".into(),
                value: String::new()
            }]
        );
    }

    #[test]
    fn tag_errors_name_the_flag_and_the_member() {
        let error = tags("--tags", &strings(&["Value=web"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Error parsing parameter '--tags': Missing required parameter in Tags[0]: \"Key\""
        );
        let error = tags("--tags", &strings(&["Key=a,Colour=red"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Error parsing parameter '--tags': Unknown parameter in Tags[0]: \"Colour\", must be one of: Key, Value"
        );
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn filters_with_one_or_many_values() {
        let parsed = filters(
            "--filters",
            &strings(&[
                "Name=instance-state-name,Values=running,stopped",
                "Name=tag:Name,Values=web",
            ]),
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                Filter {
                    name: "instance-state-name".into(),
                    values: strings(&["running", "stopped"])
                },
                Filter {
                    name: "tag:Name".into(),
                    values: strings(&["web"])
                },
            ]
        );
        let json = filters("--filters", &strings(&[r#"[{"Name":"tag-key","Values":["Name"]}]"#])).unwrap();
        assert_eq!(
            json,
            vec![Filter {
                name: "tag-key".into(),
                values: strings(&["Name"])
            }]
        );
        assert!(filters("--filters", &strings(&["Values=a"])).is_err());
    }

    #[test]
    fn tag_specifications_shorthand() {
        let parsed = tag_specifications(
            "--tag-specifications",
            &strings(&["ResourceType=instance,Tags=[{Key=Name,Value=web},{Key=env,Value=prod}]"]),
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![TagSpecification {
                resource_type: "instance".into(),
                tags: vec![
                    Tag {
                        key: "Name".into(),
                        value: "web".into()
                    },
                    Tag {
                        key: "env".into(),
                        value: "prod".into()
                    }
                ],
            }]
        );
        let error = tag_specifications(
            "--tag-specifications",
            &strings(&["ResourceType=instance,Tags=[{Value=x}]"]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("TagSpecifications[0].Tags[0]"), "{error}");
    }

    #[test]
    fn block_device_mappings_shorthand_and_json() {
        let shorthand = block_device_mappings(
            "--block-device-mappings",
            &strings(&["DeviceName=/dev/xvda,Ebs={VolumeSize=8,DeleteOnTermination=false}"]),
        )
        .unwrap();
        let json = block_device_mappings(
            "--block-device-mappings",
            &strings(&[r#"[{"DeviceName":"/dev/xvda","Ebs":{"VolumeSize":8,"DeleteOnTermination":false}}]"#]),
        )
        .unwrap();
        let expected = vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                delete_on_termination: Some(false),
                volume_size_gib: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        }];
        assert_eq!(shorthand, expected);
        assert_eq!(json, expected);
    }

    #[test]
    fn block_device_mappings_full_and_instance_store() {
        let parsed = block_device_mappings(
            "--block-device-mappings",
            &strings(&[
                "DeviceName=/dev/sdb,Ebs={VolumeSize=100,VolumeType=io2,Iops=3000,Throughput=125,Encrypted=true}",
                "DeviceName=/dev/sdc,VirtualName=ephemeral0",
                "DeviceName=/dev/sdd,NoDevice=\"\"",
            ]),
        )
        .unwrap();
        assert_eq!(
            parsed[0].ebs,
            Some(EbsBlockDevice {
                volume_size_gib: Some(100),
                volume_type: "io2".into(),
                iops: Some(3000),
                throughput_mibps: Some(125),
                encrypted: true,
                ..Default::default()
            })
        );
        assert_eq!(parsed[1].virtual_name, "ephemeral0");
        assert!(parsed[2].no_device);
    }

    #[test]
    fn block_device_mapping_type_errors() {
        let error = block_device_mappings(
            "--block-device-mappings",
            &strings(&["DeviceName=/dev/xvda,Ebs={VolumeSize=big}"]),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Error parsing parameter '--block-device-mappings': Invalid type for parameter \
             BlockDeviceMappings[0].Ebs.VolumeSize, value: \"big\", valid types: integer"
        );
        let error = block_device_mappings("--block-device-mappings", &strings(&["[{\"DeviceName\": 3"])).unwrap_err();
        assert!(error.to_string().contains("Invalid JSON"), "{error}");
    }

    #[test]
    fn structures_from_a_file() {
        let path = temp_file("bdm.json", br#"[{"DeviceName":"/dev/xvda","Ebs":{"VolumeSize":20}}]"#);
        let parsed = block_device_mappings("--block-device-mappings", &[format!("file://{}", path.display())]).unwrap();
        assert_eq!(parsed[0].ebs.as_ref().unwrap().volume_size_gib, Some(20));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn user_data_text_or_file() {
        assert_eq!(
            load_blob("--user-data", "#!/bin/sh\necho hi\n").unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let path = temp_file("user-data", b"#cloud-config\n\xff");
        assert_eq!(
            load_blob("--user-data", &format!("file://{}", path.display())).unwrap(),
            b"#cloud-config\n\xff"
        );
        assert_eq!(
            load_blob("--user-data", &format!("fileb://{}", path.display())).unwrap(),
            b"#cloud-config\n\xff"
        );
        std::fs::remove_file(&path).unwrap();
        let error = load_blob("--user-data", &format!("file://{}", path.display())).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "Error parsing parameter '--user-data': Unable to load paramfile file://{}",
                path.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn placement_and_attribute_values() {
        assert_eq!(
            placement_zone("--placement", "AvailabilityZone=hearth-1a").unwrap(),
            "hearth-1a"
        );
        assert_eq!(
            placement_zone("--placement", r#"{"AvailabilityZone":"hearth-1b"}"#).unwrap(),
            "hearth-1b"
        );
        assert!(placement_zone("--placement", "Tenancy=dedicated").is_err());
        assert_eq!(attribute_value("--instance-type", "t3.large").unwrap(), "t3.large");
        assert_eq!(
            attribute_value("--instance-type", "Value=t3.large").unwrap(),
            "t3.large"
        );
        assert_eq!(
            attribute_value("--instance-type", r#"{"Value": "m5.xlarge"}"#).unwrap(),
            "m5.xlarge"
        );
    }

    #[test]
    fn ip_permissions_shorthand_and_json() {
        let shorthand = ip_permissions(
            "--ip-permissions",
            &strings(&[
                "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=10.0.0.0/8,Description=ssh},{CidrIp=192.168.0.0/16}]",
                "IpProtocol=-1,UserIdGroupPairs=[{GroupId=sg-0001,UserId=000000000000,Description='from web'}]",
            ]),
        )
        .unwrap();
        let json = ip_permissions(
            "--ip-permissions",
            &strings(&[r#"[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                 "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}, {"CidrIp": "192.168.0.0/16"}]},
                {"IpProtocol": "-1",
                 "UserIdGroupPairs": [{"GroupId": "sg-0001", "UserId": "000000000000", "Description": "from web"}]}
            ]"#]),
        )
        .unwrap();
        let expected = vec![
            IpPermission {
                ip_protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                ip_ranges: vec![
                    IpRange {
                        cidr_ip: "10.0.0.0/8".into(),
                        description: "ssh".into(),
                    },
                    IpRange {
                        cidr_ip: "192.168.0.0/16".into(),
                        description: String::new(),
                    },
                ],
                user_id_group_pairs: vec![],
            },
            IpPermission {
                ip_protocol: "-1".into(),
                from_port: None,
                to_port: None,
                ip_ranges: vec![],
                user_id_group_pairs: vec![UserIdGroupPair {
                    group_id: "sg-0001".into(),
                    description: "from web".into(),
                    user_id: "000000000000".into(),
                }],
            },
        ];
        assert_eq!(shorthand, expected);
        assert_eq!(json, expected);
        // An icmp rule: type 8, any code.
        let icmp = ip_permissions(
            "--ip-permissions",
            &strings(&["IpProtocol=icmp,FromPort=8,ToPort=-1,IpRanges=[{CidrIp=0.0.0.0/0}]"]),
        )
        .unwrap();
        assert_eq!((icmp[0].from_port, icmp[0].to_port), (Some(8), Some(-1)));
    }

    #[test]
    fn ip_permission_errors_name_the_member() {
        let error = |value: &str| {
            ip_permissions("--ip-permissions", &strings(&[value]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("FromPort=22,ToPort=22"),
            "Error parsing parameter '--ip-permissions': Missing required parameter in IpPermissions[0]: \"IpProtocol\""
        );
        assert_eq!(
            error("IpProtocol=tcp,FromPort=ssh"),
            "Error parsing parameter '--ip-permissions': Invalid type for parameter IpPermissions[0].FromPort, \
             value: \"ssh\", valid types: integer"
        );
        assert_eq!(
            error("IpProtocol=tcp,IpRanges=[{CidrIp=10.0.0.0/8,Note=x}]"),
            "Error parsing parameter '--ip-permissions': Unknown parameter in IpPermissions[0].IpRanges[0]: \
             \"Note\", must be one of: CidrIp, Description"
        );
        assert!(error("IpProtocol=tcp,IpRanges=[{Cidr=10.0.0.0/8}]")
            .contains("Missing required parameter in IpPermissions[0].IpRanges[0]: \"CidrIp\""));
        assert!(error("IpProtocol=tcp,UserIdGroupPairs=[{UserId=1}]")
            .contains("Missing required parameter in IpPermissions[0].UserIdGroupPairs[0]: \"GroupId\""));
        assert!(error("IpProtocol=tcp,Ipv6Ranges=[{CidrIpv6=::/0}]").contains(
            "Unknown parameter in IpPermissions[0]: \"Ipv6Ranges\", must be one of: IpProtocol, FromPort, ToPort, \
             IpRanges, UserIdGroupPairs"
        ));
        assert!(error(r#"[{"IpProtocol": "tcp", "FromPort": 1e10}]"#).contains("valid types: integer"));
    }

    #[test]
    fn shortcut_protocols_and_ports() {
        assert_eq!(protocol("--protocol", "tcp").unwrap(), "tcp");
        assert_eq!(protocol("--protocol", "UDP").unwrap(), "udp");
        assert_eq!(protocol("--protocol", "all").unwrap(), "-1");
        assert_eq!(protocol("--protocol", "-1").unwrap(), "-1");
        assert_eq!(protocol("--protocol", "47").unwrap(), "47");
        assert!(protocol("--protocol", "256").is_err());
        assert!(protocol("--protocol", "sctp").is_err());
        assert_eq!(port_range("--port", "22", false).unwrap(), (22, 22));
        assert_eq!(port_range("--port", "1000-2000", false).unwrap(), (1000, 2000));
        assert_eq!(port_range("--port", "-1", false).unwrap(), (-1, -1));
        assert_eq!(port_range("--port", "all", false).unwrap(), (-1, -1));
        assert_eq!(
            port_range("--port", "8", true).unwrap(),
            (8, -1),
            "icmp: the type, any code"
        );
        assert_eq!(
            port_range("--port", "3-4", true).unwrap(),
            (3, 4),
            "icmp: type 3 code 4"
        );
        assert_eq!(port_range("--port", "-1", true).unwrap(), (-1, -1));
        let error = port_range("--port", "ssh", false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Error parsing parameter '--port': port parameter should be of the form <from[-to]> (e.g. 22 or 22-25), \
             not \"ssh\""
        );
        assert!(port_range("--port", "22-", false).is_err());
    }

    #[test]
    fn metadata_options_shorthand_and_json() {
        let expected = InstanceMetadataOptions {
            http_tokens: "required".into(),
            http_endpoint: "enabled".into(),
            http_put_response_hop_limit: 2,
        };
        assert_eq!(
            metadata_options(
                "--metadata-options",
                "HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=2"
            )
            .unwrap(),
            expected
        );
        assert_eq!(
            metadata_options(
                "--metadata-options",
                r#"{"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2}"#
            )
            .unwrap(),
            expected
        );
        let partial = metadata_options("--metadata-options", "HttpTokens=optional").unwrap();
        assert_eq!(
            partial,
            InstanceMetadataOptions {
                http_tokens: "optional".into(),
                ..Default::default()
            }
        );
        let error = metadata_options("--metadata-options", "InstanceMetadataTags=enabled").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("Unknown parameter in MetadataOptions: \"InstanceMetadataTags\""),
            "{error}"
        );
        assert!(metadata_options("--metadata-options", "HttpPutResponseHopLimit=two").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(count("--count", "3").unwrap(), (3, 3));
        assert_eq!(count("--count", "2:5").unwrap(), (2, 5));
        assert!(count("--count", "5:2").is_err());
        assert!(count("--count", "0").is_err());
        assert!(count("--count", "many").is_err());
    }
}
