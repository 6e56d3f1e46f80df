//! `keel` as PID 1 boots the machine; otherwise it is a small command-line tool.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use keel::init::{self, INITCTL};
use keel::runtime::{Runtime, Stdio};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const USAGE: &str = "usage:
  keel run [--id ID] [--root STATE_DIR] [--cgroup-parent PATH] BUNDLE
      create, start and wait for the OCI bundle with the embedded runtime, then delete it;
      exits with the container's exit code (128+N when killed by signal N)
  keel init --root DIR [--cmdline OPTIONS]
      development mode: run the unpacked image in DIR with keel as PID 1 of new
      namespaces on this host; OPTIONS are the kernel options keel would read
  keel ctl list | status NAME | start NAME | stop NAME | restart NAME
           | logs NAME [-f] [-n N] | boot | poweroff | reboot | halt   [--json]
      talk to PID 1 through its control socket
  keel poweroff | reboot | halt
      ask PID 1 to shut the machine down (through /run/keel/initctl or a signal)
  keel build MANIFEST -o OUTDIR [--store DIR]... [--keel PATH] [--check]
      build a bootable kernel + initrd from a manifest and local OCI image layouts
  keel check-kernel [KERNEL_CONFIG]
      compare a kernel configuration (default: the running kernel's) with keel's kernel
      fragment: what the sandbox needs, and the hardening keel's kernel has
  keel notify [--ready] [--status TEXT] [VAR=VALUE...]
      tell keel about this service through $NOTIFY_SOCKET (the sd_notify protocol)
  keel version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str);
    // PID 1 boots the machine, unless it is a container's first process running one of the
    // commands meant for containers (the kernel may pass other stray words to init).
    if nix::unistd::getpid().as_raw() == 1 && !matches!(cmd, Some("notify" | "ctl")) {
        init::main();
    }
    match cmd {
        Some("notify") => notify(&args[1..]),
        Some("ctl") => keel::ctl::run(&args[1..]),
        #[cfg(feature = "build")]
        Some("build") => keel::build::run(&args[1..]),
        #[cfg(not(feature = "build"))]
        Some("build") => {
            eprintln!("keel build: this keel was built without the image builder (feature `build`)");
            ExitCode::from(2)
        }
        #[cfg(feature = "build")]
        Some("check-kernel") => keel::kconfig::run(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("init") => dev_init(&args[1..]),
        Some(req @ ("poweroff" | "reboot" | "halt")) => request(req),
        Some("version" | "--version") => {
            println!("keel {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut id = None;
    let mut root = PathBuf::from("/run/keel/containers");
    let mut cgroup_parent = "keel".to_string();
    let mut bundle = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" | "--root" | "--cgroup-parent" => {
                let Some(v) = it.next() else {
                    eprintln!("keel run: {a} needs a value");
                    return ExitCode::from(2);
                };
                match a.as_str() {
                    "--id" => id = Some(v.clone()),
                    "--root" => root = PathBuf::from(v),
                    _ => cgroup_parent = v.clone(),
                }
            }
            _ if bundle.is_none() && !a.starts_with('-') => bundle = Some(PathBuf::from(a)),
            _ => {
                eprintln!("keel run: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(bundle) = bundle else {
        eprintln!("keel run: no bundle given\n{USAGE}");
        return ExitCode::from(2);
    };
    let id = id.unwrap_or_else(|| format!("run-{}", std::process::id()));
    let rt = match Runtime::new(&root, &cgroup_parent) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel run: {e}");
            return ExitCode::from(125);
        }
    };
    let handle = match rt.run(&id, &bundle, Stdio::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("keel run: {e}");
            return ExitCode::from(125);
        }
    };
    let code = loop {
        match waitpid(handle.pid, None) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("keel run: waitpid {}: {e}", handle.pid);
                break 125;
            }
        }
    };
    if let Err(e) = rt.delete(handle) {
        eprintln!("keel run: {e}");
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Through the initctl FIFO when it exists (works from a container that binds it), else by
/// the signal PID 1 takes for it.
fn request(what: &str) -> ExitCode {
    if let Ok(mut f) = OpenOptions::new().write(true).open(INITCTL) {
        if f.write_all(format!("{what}\n").as_bytes()).is_ok() {
            return ExitCode::SUCCESS;
        }
    }
    let sig = match what {
        "poweroff" => Signal::SIGUSR2,
        "reboot" => Signal::SIGINT,
        _ => Signal::SIGUSR1,
    };
    match kill(Pid::from_raw(1), sig) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel {what}: cannot write {INITCTL} or signal PID 1: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dev_init(args: &[String]) -> ExitCode {
    let mut root = None;
    let mut cmdline = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--root", Some(v)) => root = Some(PathBuf::from(v)),
            ("--cmdline", Some(v)) => cmdline = v.clone(),
            _ => {
                eprintln!("keel init: bad arguments\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(root) = root else {
        eprintln!("keel init: --root is required\n{USAGE}");
        return ExitCode::from(2);
    };
    match keel::init::dev::run(&root, &cmdline) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("keel init: {e}");
            ExitCode::from(125)
        }
    }
}

/// The sd_notify client side: one datagram with newline-separated VAR=VALUE lines.
fn notify(args: &[String]) -> ExitCode {
    let mut lines = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ready" => lines.push("READY=1".to_string()),
            "--status" => match it.next() {
                Some(t) => lines.push(format!("STATUS={t}")),
                None => {
                    eprintln!("keel notify: --status needs a value");
                    return ExitCode::from(2);
                }
            },
            v if v.contains('=') && !v.starts_with('-') => lines.push(v.to_string()),
            _ => {
                eprintln!("keel notify: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        eprintln!("keel notify: NOTIFY_SOCKET is not set (the service needs readiness: notify)");
        return ExitCode::FAILURE;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.send_to(lines.join("\n").as_bytes(), &path));
    match sent {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "keel notify: cannot send to {}: {e}",
                PathBuf::from(path).display()
            );
            ExitCode::FAILURE
        }
    }
}
