//! One-shot system set-up done by PID 1: hostname, loopback, rlimits, cgroup controllers,
//! stdio, and leaving the initramfs so containers can pivot_root.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("hostname {0:?} in /etc/hostname is not valid")]
    BadHostname(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SystemError {
    let what = what.into();
    move |errno| SystemError::Sys { what, errno }
}

pub const DEFAULT_HOSTNAME: &str = "keel";

/// The hostname from /etc/hostname's first line, or the default when it is absent or empty.
pub fn hostname_from(contents: Option<&str>) -> Result<String, SystemError> {
    let name = contents
        .and_then(|c| c.lines().next())
        .map(str::trim)
        .unwrap_or("");
    if name.is_empty() {
        return Ok(DEFAULT_HOSTNAME.into());
    }
    let ok = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(name.into())
    } else {
        Err(SystemError::BadHostname(name.into()))
    }
}

pub fn set_hostname(root: &Path) -> Result<String, SystemError> {
    let contents = fs::read_to_string(root.join("etc/hostname")).ok();
    let name = hostname_from(contents.as_deref())?;
    nix::unistd::sethostname(&name).map_err(sys(format!("sethostname({name})")))?;
    Ok(name)
}

pub fn loopback_up() -> Result<(), SystemError> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket for loopback set-up"))?;
    // SAFETY: ifreq is plain old data; the ioctls read and write only within it.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(SystemError::Sys {
                what: "SIOCGIFFLAGS lo".into(),
                errno: nix::Error::last(),
            });
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(SystemError::Sys {
                what: "SIOCSIFFLAGS lo up".into(),
                errno: nix::Error::last(),
            });
        }
    }
    Ok(())
}

/// Limits every process inherits unless its container says otherwise.
pub fn set_rlimits() -> Result<(), SystemError> {
    setrlimit(Resource::RLIMIT_NOFILE, 1024, 524_288).map_err(sys("setrlimit NOFILE 1024:524288"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, libc::RLIM_INFINITY).map_err(sys("setrlimit CORE 0:unlimited"))?;
    Ok(())
}

/// PID 1 is the last process the OOM killer may pick.
pub fn protect_from_oom() -> Result<(), SystemError> {
    let path = PathBuf::from("/proc/self/oom_score_adj");
    fs::write(&path, "-1000").map_err(|source| SystemError::Io {
        what: "cannot write",
        path,
        source,
    })
}

/// Enable every available controller for children of `cgroup` (a cgroup v2 directory).
pub fn enable_controllers(cgroup: &Path) -> Result<Vec<String>, SystemError> {
    let path = cgroup.join("cgroup.controllers");
    let available = fs::read_to_string(&path).map_err(|source| SystemError::Io {
        what: "cannot read",
        path,
        source,
    })?;
    let control = cgroup.join("cgroup.subtree_control");
    let mut enabled = Vec::new();
    let mut failed = Vec::new();
    for c in available.split_whitespace() {
        match fs::write(&control, format!("+{c}")) {
            Ok(()) => enabled.push(c.to_string()),
            Err(e) => failed.push(format!("{c} ({e})")),
        }
    }
    if !failed.is_empty() {
        log::warn!("{}: could not enable {}", control.display(), failed.join(", "));
    }
    Ok(enabled)
}

/// What the containers together may not take from the machine: memory for PID 1, the
/// kernel and a shell, and PIDs for PID 1 to fork with. A runaway container then meets the
/// OOM killer of its own cgroup tree, never the machine's, and no fork bomb across
/// services can leave PID 1 without a process slot.
fn reserve(mem_total: u64, pid_max: u64) -> (u64, u64) {
    let mem_reserve = (mem_total / 8).clamp(32 << 20, 256 << 20);
    (
        mem_total.saturating_sub(mem_reserve),
        pid_max.saturating_sub(256).max(64),
    )
}

/// Cap the cgroup all containers live under (see `reserve`); returns the limits set.
pub fn limit_containers(cgroup: &Path) -> Result<(u64, u64), SystemError> {
    let read = |p: &str| {
        fs::read_to_string(p).map_err(|source| SystemError::Io {
            what: "cannot read",
            path: p.into(),
            source,
        })
    };
    let meminfo = read("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let pid_max: u64 = read("/proc/sys/kernel/pid_max")?.trim().parse().unwrap_or(32768);
    let (mem, pids) = reserve(kib * 1024, pid_max);
    for (file, value) in [("memory.max", mem), ("pids.max", pids)] {
        let path = cgroup.join(file);
        fs::write(&path, value.to_string()).map_err(|source| SystemError::Io {
            what: "cannot write",
            path,
            source,
        })?;
    }
    Ok((mem, pids))
}

/// Make sure fds 0, 1 and 2 are open (on /dev/null when the kernel gave us no console),
/// so nothing PID 1 opens later lands on them.
pub fn ensure_stdio() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            if let Ok(f) = fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                let raw = f.as_raw_fd();
                if raw != fd {
                    let _ = nix::unistd::dup2(raw, fd);
                } else {
                    std::mem::forget(f);
                }
            }
        }
    }
}

/// The initramfs root cannot be the old root of a pivot_root. Bind-mount it onto itself
/// and make that bind mount our root: containers can then pivot_root, and nothing is copied.
pub fn leave_initramfs() -> Result<bool, SystemError> {
    let st = statfs("/").map_err(sys("statfs /"))?;
    // The initramfs is ramfs (RAMFS_MAGIC), or tmpfs when the kernel has it.
    let magic = st.filesystem_type().0 as u32;
    if magic != 0x8584_58f6 && magic != TMPFS_MAGIC.0 as u32 {
        return Ok(false);
    }
    let tmp = Path::new("/.keel-root");
    let _ = fs::create_dir(tmp);
    mount(
        Some("/"),
        tmp,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind-mount / on /.keel-root"))?;
    nix::unistd::chdir(tmp).map_err(sys("chdir /.keel-root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move /.keel-root to /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    let _ = fs::remove_dir(tmp);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_leave_room_for_the_machine() {
        let mib = 1 << 20;
        // A small VM keeps 32 MiB, a big machine at most 256 MiB.
        assert_eq!(reserve(256 * mib, 32768), (224 * mib, 32512));
        assert_eq!(reserve(1024 * mib, 4_194_304), (896 * mib, 4_194_048));
        assert_eq!(reserve(64 * 1024 * mib, 32768).0, (64 * 1024 - 256) * mib);
        assert_eq!(reserve(0, 0), (0, 64));
    }

    #[test]
    fn hostname_rules() {
        assert_eq!(hostname_from(None).unwrap(), "keel");
        assert_eq!(hostname_from(Some("")).unwrap(), "keel");
        assert_eq!(hostname_from(Some("  \n")).unwrap(), "keel");
        assert_eq!(
            hostname_from(Some("edge-01.lab\nignored")).unwrap(),
            "edge-01.lab"
        );
        assert!(hostname_from(Some("bad name")).is_err());
        assert!(hostname_from(Some(&"x".repeat(65))).is_err());
    }
}
