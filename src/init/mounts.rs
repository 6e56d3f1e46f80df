//! The base filesystems PID 1 mounts, as a table (unit-tested) and the code that applies it.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {path}: {source}")]
    Mkdir { path: PathBuf, source: std::io::Error },
    #[error("cannot mount {fstype} on {path}: {errno}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot {what} {path}: {errno}")]
    Propagation {
        what: &'static str,
        path: PathBuf,
        errno: nix::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount {
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;

/// In mount order: parents before children.
pub const BASE: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "",
    },
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: NOSUID.union(NOEXEC),
        data: "mode=0755",
    },
    Mount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID.union(NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    Mount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "mode=1777",
    },
    Mount {
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "",
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        data: "mode=0755,size=10%",
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID.union(NODEV),
        data: "mode=1777",
    },
    Mount {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID.union(NODEV).union(NOEXEC),
        // Moving a process into a cgroup (every container start) otherwise waits out an RCU
        // grace period when nothing moved lately: 10-30 ms on several CPUs. Forks and exits
        // pay a little instead. Kernels before 6.0 refuse the option (see `apply`).
        data: "nsdelegate,favordynmods",
    },
];

/// The standard /dev symlinks, created after /dev and /proc are mounted.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Mount one entry under `root`; an existing mount there (the kernel's devtmpfs automount,
/// or a second run) is left alone.
pub fn apply(root: &Path, m: &Mount) -> Result<bool, MountError> {
    let path = root.join(m.target.trim_start_matches('/'));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&path)
        .map_err(|source| MountError::Mkdir {
            path: path.clone(),
            source,
        })?;
    if is_mount_point(&path) {
        return Ok(false);
    }
    if crate::fault::injected("mount", m.target) {
        return Err(MountError::Mount {
            fstype: m.fstype,
            path,
            errno: crate::fault::ERRNO,
        });
    }
    let data = (!m.data.is_empty()).then_some(m.data);
    let mut done = mount(Some(m.fstype), &path, Some(m.fstype), m.flags, data);
    if done == Err(nix::errno::Errno::EINVAL) {
        if let Some(older) = m.data.strip_suffix(",favordynmods") {
            done = mount(Some(m.fstype), &path, Some(m.fstype), m.flags, Some(older));
        }
    }
    done.map_err(|errno| MountError::Mount {
        fstype: m.fstype,
        path,
        errno,
    })?;
    Ok(true)
}

/// Mount the whole table; returns the failures (each already names what failed).
pub fn mount_base(root: &Path) -> Vec<MountError> {
    let mut errors = Vec::new();
    for m in BASE {
        if let Err(e) = apply(root, m) {
            errors.push(e);
        }
    }
    for (link, target) in DEV_LINKS {
        let path = root.join(link.trim_start_matches('/'));
        if fs::symlink_metadata(&path).is_err() {
            let _ = std::os::unix::fs::symlink(target, &path);
        }
    }
    errors
}

/// Let a container's mounts reach the host, the way a disk-mounting onboot container needs:
/// it binds a directory (say /var/log) with `rshared` and sets `rootfsPropagation: shared`,
/// and what it mounts there appears in PID 1's tree only if PID 1's mounts are shared (the
/// kernel creates them private). The runtime makes the mount holding a container's rootfs
/// private before its pivot_root; were that the shared root itself, the container's binds
/// would lose their link to the host. So the bundles' directory gets a private mount of its
/// own. Containers that ask for nothing get slave copies: nothing they mount leaks out.
pub fn share(root: &Path, containers: &Path) -> Result<(), MountError> {
    let fail = |what, path: &Path| {
        let path = path.to_path_buf();
        move |errno| MountError::Propagation { what, path, errno }
    };
    let rec = MsFlags::MS_REC;
    mount(
        None::<&str>,
        root,
        None::<&str>,
        rec | MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(fail("make shared", root))?;
    if containers.is_dir() && !is_mount_point(containers) {
        mount(
            Some(containers),
            containers,
            None::<&str>,
            rec | MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail("bind-mount onto itself", containers))?;
    }
    if containers.is_dir() {
        mount(
            None::<&str>,
            containers,
            None::<&str>,
            rec | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(fail("make private", containers))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_base_filesystem_is_there_once() {
        let targets: Vec<_> = BASE.iter().map(|m| m.target).collect();
        for t in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/run",
            "/tmp",
            "/sys/fs/cgroup",
        ] {
            assert_eq!(targets.iter().filter(|&&x| x == t).count(), 1, "{t}");
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, m) in BASE.iter().enumerate() {
            for later in &BASE[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} must come after {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn nothing_is_suid_and_only_dev_allows_devices() {
        for m in BASE {
            assert!(m.flags.contains(MsFlags::MS_NOSUID), "{} lacks nosuid", m.target);
            if !["/dev", "/dev/pts"].contains(&m.target) {
                assert!(m.flags.contains(MsFlags::MS_NODEV), "{} lacks nodev", m.target);
            }
        }
        let cg = BASE.iter().find(|m| m.target == "/sys/fs/cgroup").unwrap();
        assert_eq!(cg.fstype, "cgroup2", "pure cgroup v2");
    }

    #[test]
    fn dev_links_point_into_proc() {
        assert!(DEV_LINKS
            .iter()
            .all(|(l, t)| l.starts_with("/dev/") && t.starts_with("/proc/self/fd")));
    }
}
