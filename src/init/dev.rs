//! Development mode: keel as PID 1 of fresh PID, mount, UTS, IPC and network namespaces on
//! a host, over a directory holding an unpacked image. Everything a real boot does happens
//! (mounts, containers, shutdown) except what only a machine has: the console, the kernel
//! command line (options come from the caller) and the final reboot, which only ends the
//! namespace.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{what}: {errno}")]
    Sys { what: String, errno: nix::Error },
    #[error("{0} has no /containers directory: not an unpacked keel image")]
    NotAnImage(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> DevError {
    let what = what.into();
    move |errno| DevError::Sys { what, errno }
}

/// How the namespace's PID 1 ended, as the shutdown it performed.
pub fn outcome(status: WaitStatus) -> (&'static str, i32) {
    match status {
        // reboot(2) in a PID namespace kills its init: SIGINT for poweroff/halt, SIGHUP for reboot.
        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGINT, _) => ("powered off", 0),
        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGHUP, _) => ("rebooted", 0),
        WaitStatus::Signaled(_, _, _) => ("killed", 1),
        WaitStatus::Exited(_, c) => ("exited", if c == 0 { 1 } else { c }),
        _ => ("ended", 1),
    }
}

/// Run the image under `root` with keel as PID 1 of new namespaces; returns the exit code.
pub fn run(root: &Path, cmdline: &str) -> Result<i32, DevError> {
    let root = std::fs::canonicalize(root).map_err(|e| DevError::Sys {
        what: format!("cannot resolve {}", root.display()),
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
    })?;
    if !root.join("containers").is_dir() {
        return Err(DevError::NotAnImage(root.display().to_string()));
    }
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    unshare(flags).map_err(sys("unshare pid, mount, uts, ipc and net namespaces"))?;
    // SAFETY: `keel init` is single-threaded; the child only makes syscalls and becomes PID 1.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            if let Err(e) = enter(&root) {
                eprintln!("keel init: {e}");
                std::process::exit(125);
            }
            crate::init::pid1(Some(cmdline.to_string()))
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(status) => {
                    let (how, code) = outcome(status);
                    eprintln!("keel init: PID 1 {how}");
                    return Ok(code);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(DevError::Sys {
                        what: "waitpid".into(),
                        errno: e,
                    })
                }
            }
        },
    }
}

/// Make `root` this mount namespace's root, as a bind mount (containers can pivot_root).
fn enter(root: &Path) -> Result<(), DevError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make / private"))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mount {}", root.display())))?;
    nix::unistd::chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(sys("move root to /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}
