//! Images: RegisterImage (files copied into the image store), DescribeImages,
//! DeregisterImage, CreateImage (from an instance's root volume).

use std::path::{Path, PathBuf};

use super::{Engine, State};
use crate::error::{Ec2Error, Ec2Result};
use crate::filter::{self, Filter, Values};
use crate::ids::IdKind;
use crate::model::{BlockDeviceMapping, EbsSpec, Image, ImageState, InstanceState, Tags};
use crate::store::Changes;

/// RegisterImage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterImageRequest {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `x86_64` (default).
    pub architecture: String,
    /// Kernel file on hearthd's host.
    pub kernel_path: String,
    /// Initrd file ("" = none).
    pub initrd_path: String,
    /// Raw root disk image.
    pub root_image_path: String,
    /// Default `/dev/xvda`.
    pub root_device_name: String,
    /// `ebs` (default) or `instance-store`.
    pub root_device_type: String,
    /// Default kernel command line.
    pub command_line: String,
    /// Other volumes of instances launched from it.
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Validate only.
    pub dry_run: bool,
}

/// CreateImage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateImageRequest {
    /// The instance (running or stopped).
    pub instance_id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Do not reboot (hearth never reboots for CreateImage; see the crate docs).
    pub no_reboot: bool,
    /// Validate only.
    pub dry_run: bool,
}

/// The command line of an image registered without one.
pub const DEFAULT_COMMAND_LINE: &str = "console=ttyS0 reboot=k panic=1";

const IMAGE_FILTERS: &[&str] = &[
    "image-id",
    "name",
    "state",
    "architecture",
    "root-device-type",
    "root-device-name",
    "description",
];

fn check_name(state: &State, name: &str) -> Ec2Result<()> {
    if name.is_empty() {
        return Err(Ec2Error::MissingParameter("Name".into()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if name.len() < 3 || name.len() > 128 || !name.chars().all(allowed) {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "Invalid image name '{name}': 3 to 128 letters, digits, spaces and ()[]./-'@_"
        )));
    }
    if state
        .images
        .values()
        .any(|image| image.name == name && image.state != ImageState::Deregistered)
    {
        return Err(Ec2Error::ImageNameDuplicate(name.to_string()));
    }
    Ok(())
}

fn require_file(path: &str, what: &str) -> Ec2Result<()> {
    if path.is_empty() {
        return Err(Ec2Error::MissingParameter(what.to_string()));
    }
    if !Path::new(path).is_absolute() {
        return Err(Ec2Error::InvalidParameterValue(format!(
            "{what}: not an absolute path: {path}"
        )));
    }
    if !Path::new(path).is_file() {
        return Err(Ec2Error::InvalidParameterValue(format!("{what}: no such file: {path}")));
    }
    Ok(())
}

/// Copies `from` to `to`, naming both in the error.
fn copy_file(from: &Path, to: &Path) -> Ec2Result<u64> {
    std::fs::copy(from, to).map_err(|error| Ec2Error::io(format!("copy {} to {}", from.display(), to.display()), error))
}

/// Files of a new image in the store, removed again unless `keep` is called.
struct ImageFiles {
    dir: PathBuf,
    keep: bool,
}

impl ImageFiles {
    fn create(image_dir: &Path, id: &str) -> Ec2Result<ImageFiles> {
        let dir = image_dir.join(id);
        std::fs::create_dir_all(&dir).map_err(|error| Ec2Error::io(format!("create {}", dir.display()), error))?;
        Ok(ImageFiles { dir, keep: false })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for ImageFiles {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl Engine {
    /// RegisterImage: checks the files, copies them into `<image dir>/<ami-id>/`, records the image.
    pub fn register_image(&self, request: RegisterImageRequest) -> Ec2Result<String> {
        check_name(&self.lock().state, &request.name)?;
        if !request.architecture.is_empty() && request.architecture != "x86_64" {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Unsupported architecture '{}' (x86_64 only)",
                request.architecture
            )));
        }
        require_file(&request.kernel_path, "KernelPath")?;
        if !request.initrd_path.is_empty() {
            require_file(&request.initrd_path, "InitrdPath")?;
        }
        require_file(&request.root_image_path, "RootImagePath")?;
        let root_device_type = if request.root_device_type.is_empty() {
            "ebs"
        } else {
            request.root_device_type.as_str()
        };
        if root_device_type != "ebs" && root_device_type != "instance-store" {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid RootDeviceType '{root_device_type}'"
            )));
        }
        let root_device_name = if request.root_device_name.is_empty() {
            "/dev/xvda"
        } else {
            request.root_device_name.as_str()
        };
        if !root_device_name.starts_with("/dev/") {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid RootDeviceName '{root_device_name}'"
            )));
        }
        for mapping in &request.block_device_mappings {
            if !mapping.device_name.starts_with("/dev/") {
                return Err(Ec2Error::InvalidBlockDeviceMapping(format!(
                    "Invalid device name '{}'",
                    mapping.device_name
                )));
            }
        }
        if request.dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let id = IdKind::Image.generate();
        let mut files = ImageFiles::create(&self.options.image_dir, &id)?;
        let kernel = files.path("kernel");
        copy_file(Path::new(&request.kernel_path), &kernel)?;
        let initrd = if request.initrd_path.is_empty() {
            None
        } else {
            let initrd = files.path("initrd");
            copy_file(Path::new(&request.initrd_path), &initrd)?;
            Some(path_text(&initrd))
        };
        let root = files.path("root.img");
        let root_size_bytes = copy_file(Path::new(&request.root_image_path), &root)?;
        let image = Image {
            id: id.clone(),
            name: request.name.clone(),
            description: request.description,
            architecture: "x86_64".to_string(),
            state: ImageState::Available,
            creation_ms: self.now(),
            kernel_path: path_text(&kernel),
            initrd_path: initrd,
            root_path: path_text(&root),
            root_size_bytes,
            root_device_name: root_device_name.to_string(),
            root_device_type: root_device_type.to_string(),
            command_line: if request.command_line.is_empty() {
                DEFAULT_COMMAND_LINE.to_string()
            } else {
                request.command_line
            },
            block_device_mappings: request.block_device_mappings,
            source_instance_id: None,
            tags: Tags::new(),
        };
        let mut inner = self.lock();
        check_name(&inner.state, &request.name)?;
        self.commit(
            &mut inner,
            Changes {
                images: vec![image],
                ..Changes::default()
            },
        )?;
        files.keep = true;
        Ok(id)
    }

    /// DescribeImages: every registered image, or those named (all must exist), filtered.
    pub fn describe_images(&self, ids: &[String], filters: &[Filter]) -> Ec2Result<Vec<Image>> {
        filter::check_names(filters, IMAGE_FILTERS)?;
        let inner = self.lock();
        let visible = |image: &&Image| image.state != ImageState::Deregistered;
        let mut images: Vec<&Image> = if ids.is_empty() {
            inner.state.images.values().filter(visible).collect()
        } else {
            for id in ids {
                IdKind::Image.validate(id)?;
            }
            let missing: Vec<&str> = ids
                .iter()
                .filter(|id| !inner.state.images.get(id.as_str()).is_some_and(|image| visible(&image)))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(Ec2Error::ImageNotFound(missing.join(", ")));
            }
            let mut seen = std::collections::BTreeSet::new();
            ids.iter()
                .filter(|id| seen.insert(id.as_str()))
                .map(|id| &inner.state.images[id])
                .collect()
        };
        images.retain(|image| {
            filter::matches(filters, &image.tags, |name| {
                Some(Values::One(match name {
                    "image-id" => image.id.clone(),
                    "name" => image.name.clone(),
                    "state" => image.state.as_str().to_string(),
                    "architecture" => image.architecture.clone(),
                    "root-device-type" => image.root_device_type.clone(),
                    "root-device-name" => image.root_device_name.clone(),
                    "description" => image.description.clone(),
                    _ => return None,
                }))
            })
        });
        images.sort_by(|a, b| (a.creation_ms, &a.id).cmp(&(b.creation_ms, &b.id)));
        Ok(images.into_iter().cloned().collect())
    }

    /// DeregisterImage: the image disappears; its files go once no instance uses them.
    pub fn deregister_image(&self, id: &str, dry_run: bool) -> Ec2Result<()> {
        if id.is_empty() {
            return Err(Ec2Error::MissingParameter("ImageId".into()));
        }
        IdKind::Image.validate(id)?;
        let mut inner = self.lock();
        let image = inner
            .state
            .images
            .get(id)
            .filter(|image| image.state != ImageState::Deregistered)
            .ok_or_else(|| Ec2Error::ImageNotFound(id.to_string()))?
            .clone();
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let used = inner
            .state
            .instances
            .values()
            .any(|i| i.image_id == id && i.state != InstanceState::Terminated);
        let changes = if used {
            Changes {
                images: vec![Image {
                    state: ImageState::Deregistered,
                    ..image
                }],
                ..Changes::default()
            }
        } else {
            Changes {
                deleted_images: vec![id.to_string()],
                ..Changes::default()
            }
        };
        self.commit(&mut inner, changes)?;
        drop(inner);
        if !used {
            let _ = std::fs::remove_dir_all(self.options.image_dir.join(id));
        }
        Ok(())
    }

    /// CreateImage: a new image from a running or stopped instance: its kernel, initrd and
    /// command line, and a copy of its root volume file (or the root's source while the
    /// volume file does not exist yet).
    pub fn create_image(&self, request: CreateImageRequest) -> Ec2Result<String> {
        if request.instance_id.is_empty() {
            return Err(Ec2Error::MissingParameter("InstanceId".into()));
        }
        let (source, root_volume_path, kernel, initrd, template) = {
            let inner = self.lock();
            let state = &inner.state;
            let instance = super::instances::lookup(state, std::slice::from_ref(&request.instance_id))?[0];
            if !matches!(instance.state, InstanceState::Running | InstanceState::Stopped) {
                return Err(Ec2Error::IncorrectState(format!(
                    "The instance '{}' is not in a state from which an image can be created (running or stopped).",
                    instance.id
                )));
            }
            check_name(state, &request.name)?;
            let root = instance
                .block_devices
                .first()
                .and_then(|device| state.volumes.get(&device.volume_id))
                .ok_or_else(|| {
                    Ec2Error::IncorrectState(format!("The instance '{}' has no root volume", instance.id))
                })?;
            let image = state.images.get(&instance.image_id);
            let volume_file = self.options.volume_files.volume_path(&instance.host_id, &root.id);
            let root_path = if volume_file.exists() {
                volume_file
            } else {
                PathBuf::from(&root.source_path)
            };
            let kernel = instance
                .kernel_override
                .clone()
                .or(image.map(|i| i.kernel_path.clone()))
                .unwrap_or_default();
            let initrd = instance
                .ramdisk_override
                .clone()
                .or(image.and_then(|i| i.initrd_path.clone()));
            let mappings: Vec<BlockDeviceMapping> = instance
                .block_devices
                .iter()
                .skip(1)
                .filter_map(|device| state.volumes.get(&device.volume_id).map(|volume| (device, volume)))
                .map(|(device, volume)| BlockDeviceMapping {
                    device_name: device.device_name.clone(),
                    ebs: Some(EbsSpec {
                        delete_on_termination: Some(device.delete_on_termination),
                        volume_size_gib: Some(volume.size_gib),
                        volume_type: volume.volume_type.clone(),
                        iops: volume.iops,
                        encrypted: volume.encrypted,
                        ..EbsSpec::default()
                    }),
                    ..BlockDeviceMapping::default()
                })
                .collect();
            let template = Image {
                id: String::new(),
                name: request.name.clone(),
                description: request.description.clone(),
                architecture: "x86_64".to_string(),
                state: ImageState::Available,
                creation_ms: 0,
                kernel_path: String::new(),
                initrd_path: None,
                root_path: String::new(),
                root_size_bytes: 0,
                root_device_name: instance.root_device_name.clone(),
                root_device_type: instance.root_device_type.clone(),
                command_line: image.map_or_else(|| DEFAULT_COMMAND_LINE.to_string(), |i| i.command_line.clone()),
                block_device_mappings: mappings,
                source_instance_id: Some(instance.id.clone()),
                tags: Tags::new(),
            };
            (instance.id.clone(), root_path, kernel, initrd, template)
        };
        if request.dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let id = IdKind::Image.generate();
        let mut files = ImageFiles::create(&self.options.image_dir, &id)?;
        let kernel_copy = files.path("kernel");
        copy_file(Path::new(&kernel), &kernel_copy)?;
        let initrd_copy = match &initrd {
            Some(initrd) => {
                let copy = files.path("initrd");
                copy_file(Path::new(initrd), &copy)?;
                Some(path_text(&copy))
            }
            None => None,
        };
        let root_copy = files.path("root.img");
        let root_size_bytes = copy_file(&root_volume_path, &root_copy)?;
        let image = Image {
            id: id.clone(),
            creation_ms: self.now(),
            kernel_path: path_text(&kernel_copy),
            initrd_path: initrd_copy,
            root_path: path_text(&root_copy),
            root_size_bytes,
            ..template
        };
        let mut inner = self.lock();
        check_name(&inner.state, &request.name)?;
        if !inner.state.instances.contains_key(&source) {
            return Err(Ec2Error::InstanceNotFound(source));
        }
        self.commit(
            &mut inner,
            Changes {
                images: vec![image],
                ..Changes::default()
            },
        )?;
        files.keep = true;
        Ok(id)
    }
}
