//! keel's benchmarks. One static binary with two roles:
//!
//! * on the host, `keel-bench run` measures keel against runc, crun and a LinuxKit-style
//!   boot and writes `results.json` and `results.md` (`scripts/bench.sh` is the entry point);
//! * inside the test images it is the instrument: `stamp` prints a timestamp, `probe` reads
//!   PID 1's memory and times the control socket once every service is ready, and `flap` is
//!   a service that exits so that restarts can be timed.
//!
//! Benchmarks report numbers; they assert nothing about them. A run fails only when a
//! measurement could not be made at all.

mod boot;
mod guest;
mod images;
mod lifecycle;
mod report;
mod stats;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Everything that can stop a measurement; each names what it was doing.
#[derive(Debug)]
pub enum Error {
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    Command {
        cmd: String,
        msg: String,
    },
    Invalid(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, path, source } => write!(f, "{what} {}: {source}", path.display()),
            Error::Command { cmd, msg } => write!(f, "{cmd}: {msg}"),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| Error::Io { what, path, source }
}

pub fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Run a command to completion; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        cmd: name.clone(),
        msg: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: name,
            msg: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of keel's console timestamps, and (but for
/// suspend, which a test VM never does) of the kernel's.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const USAGE: &str = "usage:
  keel-bench run --out DIR [--quick] [--only PART,...] [--repo DIR] [--rounds N] [--boots N]
                 [--scale N,N,...]
      measure (PART: lifecycle, boot, scale, restart, footprint; default all) and write
      DIR/results.json and DIR/results.md. Inputs from the environment: KEEL_BIN (the static
      keel), KEEL_HOST_BIN (a keel with the image builder), KEEL_KERNEL (keel's kernel),
      KEEL_STOCK_KERNEL (Debian's kernel, for the comparison with runc)
  keel-bench stamp LABEL          (in an image) print `BENCH stamp LABEL NS`, also to /dev/kmsg
  keel-bench probe [--settle-ms N] [--ctl-rounds N] [--spawn-rounds N]
                                  (in an image) wait for every service to be ready, then
                                  measure PID 1 and `keel ctl list`; print `BENCH probe JSON`
  keel-bench flap --run-ms N      (a service) print `BENCH up NS`, run N ms, print
                                  `BENCH down NS`, exit 1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let r = match args.first().map(String::as_str) {
        Some("run") => report::run(rest),
        Some("stamp") => guest::stamp(rest),
        Some("probe") => guest::probe(rest),
        Some("flap") => guest::flap(rest),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
