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
        Some("bench-runtime") => bench_runtime(&args[1..]),
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

/// `keel run`'s options: (id, state root, cgroup parent, bundle).
fn run_args(cmd: &str, args: &[String]) -> Result<(String, PathBuf, String, PathBuf), ExitCode> {
    let mut id = None;
    let mut root = PathBuf::from("/run/keel/containers");
    let mut cgroup_parent = "keel".to_string();
    let mut bundle = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--id" | "--root" | "--cgroup-parent" => {
                let Some(v) = it.next() else {
                    eprintln!("keel {cmd}: {a} needs a value");
                    return Err(ExitCode::from(2));
                };
                match a.as_str() {
                    "--id" => id = Some(v.clone()),
                    "--root" => root = PathBuf::from(v),
                    _ => cgroup_parent = v.clone(),
                }
            }
            _ if bundle.is_none() && !a.starts_with('-') => bundle = Some(PathBuf::from(a)),
            _ => {
                eprintln!("keel {cmd}: unexpected argument {a:?}\n{USAGE}");
                return Err(ExitCode::from(2));
            }
        }
    }
    let Some(bundle) = bundle else {
        eprintln!("keel {cmd}: no bundle given\n{USAGE}");
        return Err(ExitCode::from(2));
    };
    let id = id.unwrap_or_else(|| format!("{cmd}-{}", std::process::id()));
    Ok((id, root, cgroup_parent, bundle))
}

/// What one container took: run (create + start), wait (until its exit is reaped), delete.
#[derive(Default)]
struct Phases([std::time::Duration; 3]);

/// Create, start, wait for and delete one container, as PID 1 does for an onboot
/// container: its exit code (128+N for signal N) and whether the delete failed, or what failed.
fn lifecycle(
    rt: &Runtime,
    id: &str,
    bundle: &std::path::Path,
    phases: &mut Phases,
) -> Result<(i32, Option<String>), String> {
    let t = std::time::Instant::now();
    let handle = rt.run(id, bundle, Stdio::default()).map_err(|e| e.to_string())?;
    phases.0[0] = t.elapsed();
    let code = loop {
        match waitpid(handle.pid, None) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                let msg = format!("waitpid {}: {e}", handle.pid);
                let _ = rt.delete(handle);
                return Err(msg);
            }
        }
    };
    phases.0[1] = t.elapsed().saturating_sub(phases.0[0]);
    let deleted = rt.delete(handle).err().map(|e| e.to_string());
    phases.0[2] = t.elapsed().saturating_sub(phases.0[0] + phases.0[1]);
    Ok((code, deleted))
}

fn run(args: &[String]) -> ExitCode {
    let (id, root, cgroup_parent, bundle) = match run_args("run", args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let rt = match Runtime::new(&root, &cgroup_parent) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel run: {e}");
            return ExitCode::from(125);
        }
    };
    match lifecycle(&rt, &id, &bundle, &mut Phases::default()) {
        Ok((code, deleted)) => {
            if let Some(e) = deleted {
                eprintln!("keel run: {e}");
            }
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("keel run: {e}");
            ExitCode::from(125)
        }
    }
}

/// CPU time of this process and of its children that were reaped.
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .filter_map(|who| getrusage(who).ok())
        .map(|u| {
            let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
            std::time::Duration::from_micros(us(u.user_time()) + us(u.system_time()))
        })
        .sum()
}

/// Hidden, for the benchmarks: `keel bench-runtime [run options] BUNDLE` runs one
/// create+start+wait+delete per line read on stdin, in this process (what PID 1 pays, without
/// a process start), and answers each with `NANOSECONDS EXIT_CODE RUN WAIT DELETE CPU` (the
/// phases, and the CPU time of this process and the container's, in nanoseconds) or
/// `error MESSAGE`.
fn bench_runtime(args: &[String]) -> ExitCode {
    let (id, root, cgroup_parent, bundle) = match run_args("bench-runtime", args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let rt = match Runtime::new(&root, &cgroup_parent) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel bench-runtime: {e}");
            return ExitCode::from(125);
        }
    };
    // Raw reads of fd 0: the standard library's buffered stdin would cost the device binary
    // kilobytes for this hidden command alone.
    let mut buf = [0u8; 64];
    let mut out = std::io::stdout();
    loop {
        let n = match nix::unistd::read(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for _ in buf[..n].iter().filter(|&&b| b == b'\n') {
            let (t, cpu) = (std::time::Instant::now(), cpu_time());
            let mut p = Phases::default();
            let answer = match lifecycle(&rt, &id, &bundle, &mut p) {
                Ok((code, None)) => format!(
                    "{} {code} {} {} {} {}",
                    t.elapsed().as_nanos(),
                    p.0[0].as_nanos(),
                    p.0[1].as_nanos(),
                    p.0[2].as_nanos(),
                    cpu_time().saturating_sub(cpu).as_nanos()
                ),
                Ok((_, Some(e))) | Err(e) => format!("error {}", e.replace('\n', " ")),
            };
            if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
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
