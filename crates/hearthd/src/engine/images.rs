//! Images: RegisterImage (files copied into the image store), DescribeImages,
//! DeregisterImage, CreateImage (from an instance's root volume).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{import, Engine, State};
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
    /// Kernel file below the image import directory.
    pub kernel_path: String,
    /// Initrd file below the image import directory ("" = none).
    pub initrd_path: String,
    /// Raw root disk image below the image import directory.
    pub root_image_path: String,
    /// The kernel of this registered image instead of a file (`ami-…`).
    pub kernel_id: String,
    /// The initrd of this registered image instead of a file (`ami-…`).
    pub ramdisk_id: String,
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
    /// An image manifest (`image.json`) below the image import directory, to import instead
    /// of the paths.
    pub image_location: String,
    /// An EBS-backed image's root snapshot (with `kernel_path` or `kernel_id`).
    pub root_snapshot_id: String,
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

/// Opens a file a caller names below the import directory; refusals are
/// `InvalidParameterValue` naming the parameter.
fn open_beneath(import_dir: &Path, path: &str, what: &str) -> Ec2Result<import::Opened> {
    if path.is_empty() {
        return Err(Ec2Error::MissingParameter(what.to_string()));
    }
    import::open(import_dir, path).map_err(|why| Ec2Error::InvalidParameterValue(format!("{what}: {why}")))
}

/// The most a manifest may hold.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A manifest below the import directory, parsed, and every file it names opened.
struct OpenedManifest {
    manifest: hearth_image::Manifest,
    files: std::collections::HashMap<String, std::fs::File>,
}

fn open_manifest(import_dir: &Path, location: &str) -> Ec2Result<OpenedManifest> {
    let opened = open_beneath(import_dir, location, "ImageLocation")?;
    let shown = &opened.relative;
    let invalid = |why: String| Ec2Error::InvalidManifest(format!("ImageLocation: {why}"));
    let bytes = import::read_all(&opened.file, MAX_MANIFEST_BYTES, shown).map_err(invalid)?;
    let json = std::str::from_utf8(&bytes).map_err(|_| invalid(format!("'{}' is not UTF-8", shown.display())))?;
    let manifest = hearth_image::Manifest::parse(json).map_err(|e| invalid(format!("{}: {e}", shown.display())))?;
    let files = import::open_manifest_files(&opened.dir, &manifest, shown.parent().unwrap_or(Path::new("")))
        .map_err(invalid)?;
    Ok(OpenedManifest { manifest, files })
}

/// The kernel (or with `ramdisk`, the initrd) file in the image store of the registered image
/// `id`: `InvalidAMIID.Malformed`/`InvalidAMIID.NotFound` as EC2 answers for a kernel or ramdisk
/// ID, `InvalidParameterValue` for an image without an initrd.
pub(crate) fn boot_file_of(state: &State, id: &str, ramdisk: bool) -> Ec2Result<String> {
    IdKind::Image.validate(id)?;
    let image = state
        .images
        .get(id)
        .filter(|image| image.state != ImageState::Deregistered)
        .ok_or_else(|| Ec2Error::ImageNotFound(id.to_string()))?;
    if ramdisk {
        image
            .initrd_path
            .clone()
            .ok_or_else(|| Ec2Error::InvalidParameterValue(format!("The image '{id}' has no ramdisk (initrd) to use")))
    } else {
        Ok(image.kernel_path.clone())
    }
}

/// The kernel and initrd an instance boots: its image's, or those of the images named by its
/// kernel and ramdisk attributes (image IDs; anything else, such as a host path stored by an
/// older hearthd, is ignored).
pub(crate) fn boot_files(state: &State, instance: &crate::model::Instance) -> (String, Option<String>) {
    let image = state.images.get(&instance.image_id);
    let of = |id: &Option<String>, ramdisk: bool| {
        id.as_deref().and_then(|id| state.images.get(id)).map(|image| {
            if ramdisk {
                image.initrd_path.clone()
            } else {
                Some(image.kernel_path.clone())
            }
        })
    };
    let kernel = of(&instance.kernel_override, false)
        .flatten()
        .or_else(|| image.map(|i| i.kernel_path.clone()))
        .unwrap_or_default();
    let initrd = of(&instance.ramdisk_override, true).unwrap_or_else(|| image.and_then(|i| i.initrd_path.clone()));
    (kernel, initrd)
}

/// The images an instance needs: its own and those it takes a kernel or ramdisk from.
pub(crate) fn images_used_by(instance: &crate::model::Instance) -> impl Iterator<Item = &str> {
    std::iter::once(instance.image_id.as_str())
        .chain(instance.kernel_override.as_deref())
        .chain(instance.ramdisk_override.as_deref())
}

/// Maps an image store error: what the caller's files or manifest got wrong is
/// `InvalidManifest`, the rest is hearthd's.
fn image_error(operation: &str, error: hearth_image::ImageError) -> Ec2Error {
    use hearth_image::ImageError as E;
    match error {
        E::ManifestInvalid(_) | E::ChecksumMismatch { .. } | E::SizeMismatch { .. } | E::FileMissing(_) => {
            Ec2Error::InvalidManifest(format!("{operation}: {error}"))
        }
        other => Ec2Error::io(operation.to_string(), std::io::Error::other(other.to_string())),
    }
}

/// A scratch directory in the image cache (a restored snapshot, a copy of a root volume), removed on drop.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(parent: &Path) -> Ec2Result<Staging> {
        let dir = parent.join(format!(".staging-{}", crate::ids::random_hex(8)));
        std::fs::create_dir_all(&dir).map_err(|e| Ec2Error::io(format!("create {}", dir.display()), e))?;
        Ok(Staging { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The mappings of a manifest, as the engine keeps them.
fn manifest_mappings(manifest: &hearth_image::Manifest) -> Vec<BlockDeviceMapping> {
    manifest
        .block_device_mappings
        .iter()
        .map(|m| BlockDeviceMapping {
            device_name: m.device_name.clone(),
            ebs: m.ebs.as_ref().map(|ebs| EbsSpec {
                delete_on_termination: Some(ebs.delete_on_termination),
                volume_size_gib: Some(ebs.volume_size_gib),
                volume_type: ebs.volume_type.clone(),
                ..EbsSpec::default()
            }),
            virtual_name: m.virtual_name.clone().unwrap_or_default(),
            no_device: false,
        })
        .collect()
}

impl Engine {
    /// The image store, opened on first use.
    pub(crate) fn image_store(&self) -> Ec2Result<Arc<hearth_image::BlockingImageStore>> {
        if let Some(store) = self.image_store.get() {
            return Ok(Arc::clone(store));
        }
        let store =
            hearth_image::BlockingImageStore::open(&self.options.image_store_location, &self.options.image_cache_dir)
                .map_err(|e| image_error("open the image store", e))?;
        let store = Arc::new(store);
        let _ = self.image_store.set(Arc::clone(&store));
        Ok(Arc::clone(self.image_store.get().unwrap_or(&store)))
    }

    /// Imports a manifest and its opened files into the image store and answers an image
    /// record (not committed) for it.
    fn import_opened(&self, opened: OpenedManifest) -> Ec2Result<Image> {
        let store = self.image_store()?;
        let name = opened.manifest.name.clone();
        let imported = store
            .import_opened(opened.manifest, opened.files)
            .map_err(|e| image_error(&format!("import {name}"), e))?;
        let manifest = &imported.manifest;
        let local = |digest: &str| -> Ec2Result<String> {
            store
                .local_path(digest)
                .map(|p| path_text(&p))
                .map_err(|e| image_error("fetch an image file", e))
        };
        let mut blob_digests = vec![manifest.kernel.sha256.clone()];
        blob_digests.extend(manifest.initrd.iter().map(|f| f.sha256.clone()));
        blob_digests.push(manifest.root.sha256.clone());
        Ok(Image {
            id: String::new(),
            name: manifest.name.clone(),
            description: manifest.description.clone(),
            architecture: manifest.architecture.clone(),
            state: ImageState::Available,
            creation_ms: 0,
            kernel_path: local(&manifest.kernel.sha256)?,
            initrd_path: manifest.initrd.as_ref().map(|f| local(&f.sha256)).transpose()?,
            root_path: local(&manifest.root.sha256)?,
            root_size_bytes: manifest.root.size,
            root_device_name: manifest.root_device_name.clone(),
            root_device_type: manifest.root_device_type.as_str().to_string(),
            command_line: if manifest.command_line.is_empty() {
                DEFAULT_COMMAND_LINE.to_string()
            } else {
                manifest.command_line.clone()
            },
            block_device_mappings: manifest_mappings(manifest),
            source_instance_id: None,
            tags: Tags::new(),
            image_location: String::new(),
            manifest_digest: imported.manifest_digest.clone(),
            blob_digests,
            root_snapshot_id: String::new(),
        })
    }

    /// Imports opened files (a kernel, an initrd, a root disk) under a manifest made for them.
    fn import_files(
        &self,
        name: &str,
        kernel: std::fs::File,
        initrd: Option<std::fs::File>,
        root: std::fs::File,
        root_device_type: &str,
    ) -> Ec2Result<Image> {
        use hearth_image::manifest::FileRef;
        use std::io::Seek;
        let describe = |path: &str, mut file: &std::fs::File| -> Ec2Result<FileRef> {
            file.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| Ec2Error::io(format!("read the image's {path}"), e))?;
            let (sha256, size) =
                hearth_image::sha256_reader(&mut file, path).map_err(|e| image_error("hash the image files", e))?;
            Ok(FileRef {
                path: path.to_string(),
                sha256,
                size,
            })
        };
        let manifest = hearth_image::Manifest {
            format: hearth_image::manifest::FORMAT.to_string(),
            name: name.to_string(),
            description: String::new(),
            architecture: hearth_image::manifest::ARCHITECTURE.to_string(),
            root_device_name: hearth_image::manifest::DEFAULT_ROOT_DEVICE_NAME.to_string(),
            root_device_type: root_device_type
                .parse()
                .map_err(|e| image_error("the root device type", e))?,
            command_line: hearth_image::manifest::DEFAULT_COMMAND_LINE.to_string(),
            kernel: describe("kernel", &kernel)?,
            initrd: initrd.as_ref().map(|f| describe("initrd", f)).transpose()?,
            root: describe("root.img", &root)?,
            block_device_mappings: Vec::new(),
        };
        manifest
            .validate()
            .map_err(|e| image_error("describe the image files", e))?;
        let mut files = std::collections::HashMap::new();
        files.insert("kernel".to_string(), kernel);
        if let Some(initrd) = initrd {
            files.insert("initrd".to_string(), initrd);
        }
        files.insert("root.img".to_string(), root);
        self.import_opened(OpenedManifest { manifest, files })
    }

    /// A file of hearthd's own (the image store, a staging copy), opened.
    fn open_own(path: &Path) -> Ec2Result<std::fs::File> {
        std::fs::File::open(path).map_err(|e| Ec2Error::io(format!("open {}", path.display()), e))
    }

    /// RegisterImage: from an image manifest (`ImageLocation`, every checksum verified),
    /// from files given by path, or from a snapshot of a root volume (EBS-backed AMI). The
    /// files go into the content-addressed image store.
    pub fn register_image(&self, request: RegisterImageRequest) -> Ec2Result<String> {
        if !request.architecture.is_empty() && request.architecture != "x86_64" {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Unsupported architecture '{}' (x86_64 only)",
                request.architecture
            )));
        }
        let from_location = !request.image_location.is_empty();
        let from_snapshot = !request.root_snapshot_id.is_empty();
        if from_location
            && (from_snapshot
                || !request.kernel_path.is_empty()
                || !request.initrd_path.is_empty()
                || !request.root_image_path.is_empty()
                || !request.kernel_id.is_empty()
                || !request.ramdisk_id.is_empty())
        {
            return Err(Ec2Error::InvalidParameterCombination(
                "ImageLocation excludes KernelPath, InitrdPath, RootImagePath, KernelId, RamdiskId and RootSnapshotId"
                    .to_string(),
            ));
        }
        if from_snapshot && !request.root_image_path.is_empty() {
            return Err(Ec2Error::InvalidParameterCombination(
                "RootSnapshotId excludes RootImagePath".to_string(),
            ));
        }
        if !request.kernel_path.is_empty() && !request.kernel_id.is_empty() {
            return Err(Ec2Error::InvalidParameterCombination(
                "KernelPath excludes KernelId".to_string(),
            ));
        }
        if !request.initrd_path.is_empty() && !request.ramdisk_id.is_empty() {
            return Err(Ec2Error::InvalidParameterCombination(
                "InitrdPath excludes RamdiskId".to_string(),
            ));
        }
        // Every file the caller names is opened now, below the import directory and without
        // following a symbolic link; what is imported is read from these descriptors.
        let import_dir = self.options.image_import_dir.as_path();
        let mut location = None;
        let mut files: Option<(Option<std::fs::File>, Option<std::fs::File>, Option<std::fs::File>)> = None;
        if from_location {
            location = Some(open_manifest(import_dir, &request.image_location)?);
        } else {
            if request.name.is_empty() {
                return Err(Ec2Error::MissingParameter("Name".into()));
            }
            if request.kernel_path.is_empty() && request.kernel_id.is_empty() {
                return Err(Ec2Error::MissingParameter("KernelId".into()));
            }
            let kernel = (!request.kernel_path.is_empty())
                .then(|| open_beneath(import_dir, &request.kernel_path, "KernelPath"))
                .transpose()?;
            let initrd = (!request.initrd_path.is_empty())
                .then(|| open_beneath(import_dir, &request.initrd_path, "InitrdPath"))
                .transpose()?;
            let root = if from_snapshot {
                None
            } else {
                Some(open_beneath(import_dir, &request.root_image_path, "RootImagePath")?)
            };
            files = Some((kernel.map(|o| o.file), initrd.map(|o| o.file), root.map(|o| o.file)));
        }
        let (kernel_of_id, ramdisk_of_id) = {
            let inner = self.lock();
            let kernel = (!request.kernel_id.is_empty())
                .then(|| boot_file_of(&inner.state, &request.kernel_id, false))
                .transpose()?;
            let ramdisk = (!request.ramdisk_id.is_empty())
                .then(|| boot_file_of(&inner.state, &request.ramdisk_id, true))
                .transpose()?;
            (kernel, ramdisk)
        };
        if !request.name.is_empty() {
            check_name(&self.lock().state, &request.name)?;
        }
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
        if from_snapshot && root_device_type != "ebs" {
            return Err(Ec2Error::InvalidParameterCombination(
                "An image from a snapshot is EBS-backed".to_string(),
            ));
        }
        if !request.root_device_name.is_empty() && !request.root_device_name.starts_with("/dev/") {
            return Err(Ec2Error::InvalidParameterValue(format!(
                "Invalid RootDeviceName '{}'",
                request.root_device_name
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
        let snapshot = if from_snapshot {
            IdKind::Snapshot.validate(&request.root_snapshot_id)?;
            let inner = self.lock();
            let snapshot = inner
                .state
                .snapshots
                .get(&request.root_snapshot_id)
                .ok_or_else(|| Ec2Error::SnapshotNotFound(request.root_snapshot_id.clone()))?
                .clone();
            if snapshot.state != crate::model::SnapshotState::Completed {
                return Err(Ec2Error::ResourceIncorrectState(format!(
                    "Snapshot '{}' is {}, not completed",
                    snapshot.id,
                    snapshot.state.as_str()
                )));
            }
            if snapshot.encrypted {
                return Err(Ec2Error::UnsupportedOperation(
                    "Images from encrypted snapshots are not supported yet".to_string(),
                ));
            }
            Some(snapshot)
        } else {
            None
        };
        if request.dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let mut image = if let Some(opened) = location {
            let mut image = self.import_opened(opened)?;
            image.image_location = request.image_location.clone();
            image
        } else {
            let (kernel, initrd, root) = files.unwrap_or_default();
            let kernel = match (kernel, &kernel_of_id) {
                (Some(file), _) => file,
                (None, Some(path)) => Self::open_own(Path::new(path))?,
                (None, None) => return Err(Ec2Error::MissingParameter("KernelId".into())),
            };
            let initrd = match (initrd, &ramdisk_of_id) {
                (Some(file), _) => Some(file),
                (None, Some(path)) => Some(Self::open_own(Path::new(path))?),
                (None, None) => None,
            };
            if let Some(snapshot) = &snapshot {
                // The snapshot's content becomes the root file instances clone (restored and
                // verified chunk by chunk, then stored by content like any image file).
                std::fs::create_dir_all(&self.options.image_cache_dir)
                    .map_err(|e| Ec2Error::io(format!("create {}", self.options.image_cache_dir.display()), e))?;
                let staging = Staging::new(&self.options.image_cache_dir)?;
                let root = staging.dir.join("root.img");
                self.snapshot_store()?.restore(&snapshot.id, &root, None).map_err(|e| {
                    Ec2Error::InvalidParameterValue(format!("restoring snapshot {} failed: {e}", snapshot.id))
                })?;
                let root = Self::open_own(&root)?;
                let mut image = self.import_files(&request.name, kernel, initrd, root, "ebs")?;
                image.root_snapshot_id = snapshot.id.clone();
                image
            } else {
                let root = root.ok_or_else(|| Ec2Error::MissingParameter("RootImagePath".into()))?;
                self.import_files(&request.name, kernel, initrd, root, root_device_type)?
            }
        };
        let id = IdKind::Image.generate();
        image.id = id.clone();
        image.creation_ms = self.now();
        if !request.name.is_empty() {
            image.name = request.name.clone();
        }
        if !request.description.is_empty() {
            image.description = request.description.clone();
        }
        if !request.command_line.is_empty() {
            image.command_line = request.command_line.clone();
        }
        if !request.root_device_name.is_empty() {
            image.root_device_name = request.root_device_name.clone();
        }
        if !from_location && !from_snapshot {
            image.root_device_type = root_device_type.to_string();
        }
        if !request.block_device_mappings.is_empty() {
            image.block_device_mappings = request.block_device_mappings.clone();
        }
        let mut inner = self.lock();
        check_name(&inner.state, &image.name)?;
        self.commit(
            &mut inner,
            Changes {
                images: vec![image],
                ..Changes::default()
            },
        )?;
        Ok(id)
    }

    /// Deletes the store files of `image` that no other image uses (blobs are shared by
    /// content; the manifest too when two images came from the same one).
    pub(crate) fn release_image_files(&self, image: &Image, others: &[Image]) {
        let Ok(store) = self.image_store() else {
            return;
        };
        let used = |digest: &str| {
            others
                .iter()
                .any(|o| o.id != image.id && o.blob_digests.iter().any(|d| d == digest))
        };
        for digest in &image.blob_digests {
            if !used(digest) {
                if let Err(e) = store.delete_blob(digest) {
                    eprintln!("hearthd: cannot delete image blob {digest}: {e}");
                }
            }
        }
        let manifest_used = others
            .iter()
            .any(|o| o.id != image.id && o.manifest_digest == image.manifest_digest);
        if !image.manifest_digest.is_empty() && !manifest_used {
            if let Err(e) = store.delete_manifest(&image.manifest_digest) {
                eprintln!("hearthd: cannot delete image manifest {}: {e}", image.manifest_digest);
            }
        }
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
            .any(|i| i.state != InstanceState::Terminated && images_used_by(i).any(|used| used == id));
        let changes = if used {
            Changes {
                images: vec![Image {
                    state: ImageState::Deregistered,
                    ..image.clone()
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
        let others: Vec<Image> = inner.state.images.values().cloned().collect();
        drop(inner);
        if !used {
            self.release_image_files(&image, &others);
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
            let (kernel, initrd) = boot_files(state, instance);
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
                image_location: String::new(),
                manifest_digest: String::new(),
                blob_digests: Vec::new(),
                root_snapshot_id: String::new(),
            };
            if root.encrypted {
                return Err(Ec2Error::UnsupportedOperation(format!(
                    "The root volume of '{}' is encrypted: images from encrypted volumes are not supported yet",
                    instance.id
                )));
            }
            (instance.id.clone(), root_path, kernel, initrd, template)
        };
        if request.dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        // A point-in-time copy of the root (a reflink where the file system has them), so
        // that the file hashed is the file stored even while the instance writes.
        std::fs::create_dir_all(&self.options.image_cache_dir)
            .map_err(|e| Ec2Error::io(format!("create {}", self.options.image_cache_dir.display()), e))?;
        let staging = Staging::new(&self.options.image_cache_dir)?;
        let copy = hearth_api::v1::DesiredVolume {
            volume_id: "root".to_string(),
            source_path: path_text(&root_volume_path),
            ..Default::default()
        };
        let root_copy = hearth_agent::volume::ensure_volume(&staging.dir, &copy)
            .map_err(|e| Ec2Error::io("copy the root volume", std::io::Error::other(e.to_string())))?;
        let imported = self.import_files(
            &request.name,
            Self::open_own(Path::new(&kernel))?,
            initrd.as_deref().map(|p| Self::open_own(Path::new(p))).transpose()?,
            Self::open_own(&root_copy)?,
            &template.root_device_type,
        )?;
        let id = IdKind::Image.generate();
        let image = Image {
            id: id.clone(),
            creation_ms: self.now(),
            kernel_path: imported.kernel_path,
            initrd_path: imported.initrd_path,
            root_path: imported.root_path,
            root_size_bytes: imported.root_size_bytes,
            manifest_digest: imported.manifest_digest,
            blob_digests: imported.blob_digests,
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
        Ok(id)
    }
}
