//! `hearth`: the `aws ec2`-like command line over hearthd's Compute gRPC API.

mod base64;
mod cli;
mod commands;
mod connect;
mod error;
mod json;
mod params;
mod shorthand;
mod table;
mod wait;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::connect::Session;
use crate::error::CliError;

/// The arguments without an `ec2` before the command, so that `hearth ec2 describe-instances` reads as aws does.
fn without_ec2(mut args: Vec<OsString>) -> Vec<OsString> {
    const GLOBALS_WITH_VALUE: [&str; 4] = ["--endpoint", "--ca-cert", "--token", "--output"];
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if arg == "ec2" {
            args.remove(i);
            break;
        }
        match arg.to_str() {
            Some(flag) if GLOBALS_WITH_VALUE.contains(&flag) => i += 2,
            Some(flag) if flag.starts_with('-') => i += 1,
            _ => break,
        }
    }
    args
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let endpoint = cli
        .endpoint
        .or_else(|| std::env::var("HEARTH_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(connect::default_endpoint);
    let token = cli.token.or_else(|| std::env::var("HEARTH_TOKEN").ok());
    let mut session = Session::new(endpoint, cli.ca_cert, token)?;
    commands::run(&mut session, cli.output, cli.command).await
}

fn main() -> ExitCode {
    let cli = Cli::try_parse_from(without_ec2(std::env::args_os().collect())).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // aws sets service, parameter and connection errors off with a blank line.
            let gap = match error {
                CliError::Api { .. } | CliError::Parameter { .. } | CliError::Connect { .. } => "\n",
                _ => "",
            };
            eprintln!("{gap}{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(args: &[&str]) -> Vec<OsString> {
        without_ec2(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn ec2_before_the_command_is_dropped() {
        assert_eq!(
            strip(&["hearth", "ec2", "describe-regions"]),
            strip(&["hearth", "describe-regions"])
        );
        assert_eq!(
            strip(&["hearth", "--endpoint", "unix:/s", "ec2", "describe-regions"]),
            strip(&["hearth", "--endpoint", "unix:/s", "describe-regions"])
        );
        let kept = strip(&["hearth", "create-tags", "--resources", "ec2"]);
        assert_eq!(kept.len(), 4);
    }
}
