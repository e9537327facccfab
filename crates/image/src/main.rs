//! `hearth-image`: writes and checks image manifests, imports images into an image store, and writes NoCloud
//! metadata disks.
//!
//! ```text
//! hearth-image manifest --name N --kernel FILE [--initrd FILE] --root FILE ... --out DIR/image.json
//! hearth-image verify DIR/image.json
//! hearth-image import --store LOCATION [--cache DIR] [--json] DIR/image.json
//! hearth-image cidata --instance-id I --hostname H [--public-key KEY]... [--user-data FILE] --out DISK
//! ```
//!
//! Errors are one line on stderr, `hearth-image: error: ...`, and exit status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use hearth_image::cidata::{self, Seed};
use hearth_image::manifest::{BlockDeviceMapping, DescribeOptions, RootDeviceType, DEFAULT_COMMAND_LINE};
use hearth_image::{ImageError, ImageStore, Manifest};

/// hearth images: manifests, the image store and metadata disks.
#[derive(Debug, Parser)]
#[command(name = "hearth-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write an image manifest (image.json) for a kernel, optional initrd and root disk, hashing each file
    Manifest(ManifestArgs),
    /// Re-hash every file an image manifest names and compare with the manifest
    Verify {
        /// The manifest (file paths are relative to its directory)
        manifest: PathBuf,
    },
    /// Import an image into an image store, checking every file's sha256 and size
    Import {
        /// The store: a directory, file:///dir or s3://bucket/prefix?endpoint=http://host:port
        #[arg(long, value_name = "LOCATION")]
        store: String,
        /// Cache for blobs of remote stores [default: $XDG_CACHE_HOME/hearth/images or ~/.cache/hearth/images]
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Print one JSON object: {"manifest","total_bytes","stored_bytes","seconds"}
        #[arg(long)]
        json: bool,
        /// The manifest (file paths are relative to its directory)
        manifest: PathBuf,
    },
    /// Write a NoCloud metadata disk (FAT, label cidata) for cloud-init
    Cidata(CidataArgs),
}

#[derive(Debug, clap::Args)]
struct ManifestArgs {
    /// Image name
    #[arg(long)]
    name: String,
    /// Free text
    #[arg(long, default_value = "")]
    description: String,
    /// Kernel file (vmlinux or bzImage), inside the manifest's directory
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// Initial ramdisk, inside the manifest's directory
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Root disk image (raw), inside the manifest's directory
    #[arg(long, value_name = "FILE")]
    root: PathBuf,
    /// Device name of the root disk
    #[arg(long, default_value = "/dev/xvda", value_name = "DEVICE")]
    root_device_name: String,
    /// ebs or instance-store
    #[arg(long, default_value = "ebs", value_name = "TYPE")]
    root_device_type: String,
    /// Kernel command line
    #[arg(long, default_value = DEFAULT_COMMAND_LINE, value_name = "ARGS")]
    command_line: String,
    /// Block device mapping: /dev/xvdb=ephemeral0 or /dev/sdf=ebs:SIZE_GIB[:DELETE_ON_TERMINATION[:TYPE]]
    #[arg(long = "mapping", value_name = "MAPPING")]
    mappings: Vec<String>,
    /// Where to write the manifest; the files' paths are stored relative to its directory
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CidataArgs {
    /// meta-data instance-id
    #[arg(long, value_name = "ID")]
    instance_id: String,
    /// meta-data local-hostname
    #[arg(long)]
    hostname: String,
    /// An OpenSSH public key line (repeatable)
    #[arg(long = "public-key", value_name = "KEY")]
    public_keys: Vec<String>,
    /// user-data file [default: empty]
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// network-config file (cloud-init network config YAML)
    #[arg(long, value_name = "FILE")]
    network_config: Option<PathBuf>,
    /// vendor-data file
    #[arg(long, value_name = "FILE")]
    vendor_data: Option<PathBuf>,
    /// The disk image to write
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

const MIB: f64 = 1024.0 * 1024.0;

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::FileMissing(path.into()),
        _ => ImageError::io(format!("cannot read {}", path.display()), e),
    })
}

fn manifest(args: ManifestArgs) -> Result<(), ImageError> {
    let dir = match args.out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut options = DescribeOptions::new(args.name, args.kernel, args.root);
    options.description = args.description;
    options.initrd = args.initrd;
    options.root_device_name = args.root_device_name;
    options.root_device_type = args.root_device_type.parse::<RootDeviceType>()?;
    options.command_line = args.command_line;
    options.block_device_mappings = args
        .mappings
        .iter()
        .map(|m| m.parse::<BlockDeviceMapping>())
        .collect::<Result<_, _>>()?;
    let manifest = Manifest::describe_files(&dir, &options)?;
    let temp = dir.join(format!(
        ".{}.tmp",
        args.out.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&temp, manifest.canonical_bytes())
        .and_then(|()| std::fs::rename(&temp, &args.out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            ImageError::io(format!("cannot write {}", args.out.display()), e)
        })?;
    println!(
        "wrote {} ({} files, {:.1} MiB)",
        args.out.display(),
        manifest.files().len(),
        manifest.total_bytes() as f64 / MIB
    );
    Ok(())
}

fn verify(path: &Path) -> Result<(), ImageError> {
    let manifest = Manifest::load(path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let summary = manifest.verify_files(dir)?;
    println!(
        "ok {} ({} files, {:.1} MiB)",
        manifest.name,
        summary.files,
        summary.total_bytes as f64 / MIB
    );
    Ok(())
}

fn default_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("hearth").join("images")
}

fn import(store: &str, cache: Option<PathBuf>, json: bool, manifest: &Path) -> Result<(), ImageError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ImageError::io("cannot start the async runtime", e))?;
    let start = Instant::now();
    let imported = runtime.block_on(async {
        let store = ImageStore::open(store, &cache.unwrap_or_else(default_cache))?;
        store.import(manifest).await
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        let out = serde_json::json!({
            "manifest": imported.manifest_digest,
            "total_bytes": imported.total_bytes,
            "stored_bytes": imported.newly_stored_bytes,
            "seconds": (seconds * 1000.0).round() / 1000.0,
        });
        println!("{out}");
    } else {
        println!("manifest {}", imported.manifest_digest);
        println!(
            "imported {}: stored {} of {} bytes in {seconds:.2}s",
            imported.manifest.name, imported.newly_stored_bytes, imported.total_bytes
        );
    }
    Ok(())
}

fn write_cidata(args: CidataArgs) -> Result<(), ImageError> {
    let text = |path: &Path| -> Result<String, ImageError> {
        String::from_utf8(read(path)?)
            .map_err(|_| ImageError::SeedInvalid(format!("{} is not UTF-8 text", path.display())))
    };
    let seed = Seed {
        instance_id: args.instance_id,
        hostname: args.hostname,
        public_keys: args.public_keys,
        user_data: args.user_data.as_deref().map(read).transpose()?.unwrap_or_default(),
        network_config: args.network_config.as_deref().map(text).transpose()?,
        vendor_data: args.vendor_data.as_deref().map(read).transpose()?,
    };
    let size = cidata::write_disk(&seed, &args.out)?;
    println!(
        "wrote {} ({} MiB, label {})",
        args.out.display(),
        size >> 20,
        cidata::LABEL
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manifest(args) => manifest(args),
        Command::Verify { manifest } => verify(&manifest),
        Command::Import {
            store,
            cache,
            json,
            manifest,
        } => import(&store, cache, json, &manifest),
        Command::Cidata(args) => write_cidata(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hearth-image: error: {error}");
            ExitCode::FAILURE
        }
    }
}
