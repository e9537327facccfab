//! `hearth-vmm`: runs one microVM and exits with a status that says why it ended.

use std::time::Instant;

use hearth_vmm::config::{VmConfig, USAGE};
use hearth_vmm::events;
use hearth_vmm::exit::ExitReason;
use hearth_vmm::vmm::{block_exit_signals, Vmm};

const STATUS_CONFIG_ERROR: i32 = 1;

/// `error: cause: cause…`, the whole `source()` chain on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `hearth-vmm ctl SOCKET REQUEST`: sends one request line, prints the JSON answer.
fn control_client(args: &[String]) -> i32 {
    use std::io::{BufRead, Write};
    let [socket, request @ ..] = args else {
        eprintln!(
            "usage: hearth-vmm ctl SOCKET info|power-button|shutdown [TIMEOUT_MS]|pause|resume|kill\n\
             \x20      hearth-vmm ctl SOCKET '{{\"cmd\":\"dirty-info\",\"disk\":\"ID\"}}'\n\
             \x20      hearth-vmm ctl SOCKET '{{\"cmd\":\"snapshot-disk\",\"disk\":\"ID\",\"out\":\"/abs/path\"}}'"
        );
        return STATUS_CONFIG_ERROR;
    };
    let line = match request {
        [cmd, timeout] if cmd == "shutdown" => format!(r#"{{"cmd":"shutdown","timeout_ms":{timeout}}}"#),
        [cmd] => cmd.clone(),
        _ => {
            eprintln!("hearth-vmm ctl: give exactly one request");
            return STATUS_CONFIG_ERROR;
        }
    };
    let answer = std::os::unix::net::UnixStream::connect(socket).and_then(|mut stream| {
        writeln!(stream, "{line}")?;
        let mut answer = String::new();
        std::io::BufReader::new(stream).read_line(&mut answer)?;
        Ok(answer)
    });
    match answer {
        Ok(answer) => {
            print!("{answer}");
            let ok = serde_json::from_str::<serde_json::Value>(&answer).is_ok_and(|v| v["ok"] == true);
            if ok {
                0
            } else {
                STATUS_CONFIG_ERROR
            }
        }
        Err(e) => {
            eprintln!("hearth-vmm ctl: {socket}: {e}");
            2
        }
    }
}

fn main() {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    if args.first().map(String::as_str) == Some("ctl") {
        std::process::exit(control_client(&args[1..]));
    }
    let config = match VmConfig::from_args(&args).and_then(|c| c.validate().map(|()| c)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hearth-vmm: {}", error_chain(&e));
            std::process::exit(STATUS_CONFIG_ERROR);
        }
    };
    block_exit_signals();
    let vmm = match Vmm::build(config, start) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("hearth-vmm: {}", error_chain(&e));
            let reason = ExitReason::VmmError(e.to_string());
            let status = if e.is_config_error() {
                STATUS_CONFIG_ERROR
            } else {
                reason.exit_status()
            };
            std::process::exit(status);
        }
    };
    let reason = vmm.run();
    events::emit(
        "vm-exit",
        serde_json::json!({
            "reason": reason.name(),
            "detail": reason.detail(),
            "exit_status": reason.exit_status(),
            "uptime_ms": start.elapsed().as_millis() as u64,
        }),
    );
    std::process::exit(reason.exit_status());
}
