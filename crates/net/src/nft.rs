//! Running `nft`: apply a script as one transaction, list or remove hearth's tables, and the kernel
//! settings the ruleset relies on, on the host or inside a named network namespace.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::compile::{compile_replacing, removal_script, CompileError, TABLE};
use crate::model::HostFirewall;
use crate::netns::Netns;

/// Where `nft` runs: the host's (the caller's) network namespace, or a named one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nft {
    netns: Option<String>,
}

/// What went wrong running `nft` or preparing the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The network namespace could not be opened or entered.
    #[error("network namespace {name:?}: {source}")]
    Netns {
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A program could not be started or talked to.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program (`nft`, `modprobe`).
        program: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `nft` refused the command; for a script this means the transaction changed nothing.
    #[error("nft {args} failed ({status}); nothing was changed: {stderr}")]
    Rejected {
        /// The arguments `nft` was run with.
        args: String,
        /// Its exit status.
        status: String,
        /// What `nft` printed on standard error (its error messages, with the offending line).
        stderr: String,
    },
    /// br_netfilter cannot be enabled (see [`Nft::enable_br_netfilter`]).
    #[error("br_netfilter: {0}")]
    BrNetfilter(String),
    /// The firewall did not compile (nothing was applied).
    #[error(transparent)]
    Compile(#[from] CompileError),
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Sets `bridge-nf-call-iptables` to 1 in the calling thread's namespace; false if br_netfilter is absent.
fn set_bridge_nf_call_iptables() -> io::Result<bool> {
    let path = Path::new(BRIDGE_NF_CALL_IPTABLES);
    if !path.exists() {
        return Ok(false);
    }
    if std::fs::read_to_string(path)?.trim() != "1" {
        std::fs::write(path, "1\n")?;
    }
    Ok(true)
}

impl Nft {
    /// `nft` in the caller's network namespace (the host's, for the agent).
    pub fn host() -> Nft {
        Nft { netns: None }
    }

    /// `nft` inside the network namespace `/run/netns/NAME`.
    pub fn in_netns(name: &str) -> Nft {
        Nft {
            netns: Some(name.to_string()),
        }
    }

    /// The namespace this runs in (`None`: the caller's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The whole update for one host: compiles `fw` against the current tables ([`compile_replacing`], so
    /// that chains and sets of removed ports and groups go), makes sure bridged IPv4 reaches conntrack
    /// ([`Nft::enable_br_netfilter`]), and applies the script.
    pub fn install(&self, fw: &HostFirewall) -> Result<(), NftError> {
        let current = self.current()?.unwrap_or_default();
        let script = compile_replacing(fw, &current)?;
        self.enable_br_netfilter()?;
        self.apply(&script)
    }

    /// Applies `script` with `nft -f -` (the script on standard input): one netlink transaction, so either
    /// all of it takes effect at once or, on any error, nothing does and the previous ruleset stays.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).map(drop)
    }

    /// Checks `script` with `nft -c -f -`: the kernel validates the whole transaction, then it is
    /// dropped. Nothing changes either way.
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(script)).map(drop)
    }

    /// Deletes hearth's tables; removing tables that are not there is not an error.
    pub fn remove(&self) -> Result<(), NftError> {
        self.apply(&removal_script())
    }

    /// hearth's tables as `nft -s list table` prints them (bridge first, then ip; without counter
    /// values, so that two listings of the same ruleset compare equal), or `None` when neither exists.
    pub fn current(&self) -> Result<Option<String>, NftError> {
        self.list(false)
    }

    /// Like [`Nft::current`], with the counters: packets and bytes each drop rule has dropped.
    pub fn current_with_counters(&self) -> Result<Option<String>, NftError> {
        self.list(true)
    }

    fn list(&self, counters: bool) -> Result<Option<String>, NftError> {
        let tables = self.run(&["list", "tables"], None)?;
        let mut out = String::new();
        for family in ["bridge", "ip"] {
            if tables
                .lines()
                .any(|line| line.trim() == format!("table {family} {TABLE}"))
            {
                let stateless: &[&str] = if counters { &[] } else { &["-s"] };
                let args = [stateless, &["list", "table", family, TABLE]].concat();
                out.push_str(&self.run(&args, None)?);
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Makes the bridge hand IPv4 frames to the IPv4 hooks (`net.bridge.bridge-nf-call-iptables=1`, loading
    /// the `br_netfilter` module first if needed), so that conntrack sees bridged traffic. Idempotent.
    ///
    /// This is per network namespace (kernel 5.3 and later) and affects every bridge in it: their IPv4
    /// frames then also pass the `ip`/`inet` tables' hooks (as Docker hosts already have it).
    pub fn enable_br_netfilter(&self) -> Result<(), NftError> {
        let in_namespace = || -> Result<bool, NftError> {
            let result = match &self.netns {
                None => set_bridge_nf_call_iptables(),
                Some(name) => {
                    let netns = self.open_netns()?;
                    netns
                        .run(set_bridge_nf_call_iptables)
                        .map_err(|source| NftError::Netns {
                            name: name.clone(),
                            source,
                        })?
                }
            };
            result.map_err(|e| NftError::BrNetfilter(format!("{BRIDGE_NF_CALL_IPTABLES}: {e}")))
        };
        if in_namespace()? {
            return Ok(());
        }
        let status = Command::new("modprobe")
            .arg("br_netfilter")
            .stdin(Stdio::null())
            .status()
            .map_err(|source| NftError::Spawn {
                program: "modprobe",
                source,
            })?;
        if in_namespace()? {
            return Ok(());
        }
        Err(NftError::BrNetfilter(format!(
            "{BRIDGE_NF_CALL_IPTABLES} is missing (modprobe br_netfilter: {status}); the kernel needs \
             CONFIG_BRIDGE_NETFILTER"
        )))
    }

    /// Whether this kernel tracks connections in the bridge family itself (`nf_conntrack_bridge`, Linux 5.3+
    /// with `CONFIG_NF_CONNTRACK_BRIDGE`): checked by validating (`nft -c`) a bridge chain that uses
    /// `ct state`. Changes nothing. hearth's ruleset does not need it (see the crate documentation).
    pub fn bridge_conntrack_supported(&self) -> Result<bool, NftError> {
        let probe = "table bridge hearth_probe {\n\tchain probe {\n\t\ttype filter hook forward priority 0;\n\
                     \t\tct state established accept\n\t}\n}\n";
        match self.check(probe) {
            Ok(()) => Ok(true),
            Err(NftError::Rejected { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    fn open_netns(&self) -> Result<Netns, NftError> {
        let name = self.netns.as_deref().unwrap_or_default();
        Netns::open(name).map_err(|source| NftError::Netns {
            name: name.to_string(),
            source,
        })
    }

    /// Runs `nft ARGS` (with `stdin` fed to it) and returns its standard output.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let mut command = match &self.netns {
            None => Command::new("nft"),
            Some(name) => self.open_netns()?.command("nft").map_err(|source| NftError::Netns {
                name: name.clone(),
                source,
            })?,
        };
        command
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source| NftError::Spawn { program: "nft", source };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // nft reads its whole input before it answers; a write error means it died, which its exit
            // status and standard error tell.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(NftError::Rejected {
                args: args.join(" "),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim_end().to_string(),
            })
        }
    }
}
