//! The end of the machine's life: stop stragglers, sync, unmount, reboot(2).

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::supervisor::ShutdownKind;

/// Set in development mode, where "/" is a bind mount of a host directory: remounting it
/// read-only would make the host's filesystem read-only.
pub static DEV_MODE: AtomicBool = AtomicBool::new(false);

/// Reap children until none is left or `limit` passes; true when none is left.
fn reap_all(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) => {
                if start.elapsed() >= limit {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}

/// Mount points from /proc/self/mountinfo, deepest last.
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect()
}

/// Everything that remains once supervision has ended; never returns.
pub fn finish(kind: ShutdownKind) -> ! {
    // The last steps take a few seconds at most; the watchdog stays armed until just before
    // reboot(2), so a hang here still resets the machine.
    super::watchdog::pet_now();
    log::info!("sending SIGTERM to remaining processes");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_all(Duration::from_secs(2)) {
        log::info!("sending SIGKILL to remaining processes");
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_all(Duration::from_secs(2));
    }
    nix::unistd::sync();
    let mut busy = Vec::new();
    for mp in mount_points().into_iter().rev() {
        if mp == "/" {
            continue;
        }
        if umount2(mp.as_str(), MntFlags::empty()).is_err()
            && umount2(mp.as_str(), MntFlags::MNT_DETACH).is_err()
        {
            busy.push(mp);
        }
    }
    if !busy.is_empty() {
        log::warn!("could not unmount {}", busy.join(" "));
    }
    if !DEV_MODE.load(Ordering::Relaxed) {
        let _ = nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    nix::unistd::sync();
    let mode = match kind {
        ShutdownKind::Poweroff => RebootMode::RB_POWER_OFF,
        ShutdownKind::Reboot => RebootMode::RB_AUTOBOOT,
        ShutdownKind::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    super::watchdog::disarm();
    log::info!("{kind} now");
    let err = match reboot(mode) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    log::error!("reboot({kind}) failed: {err}; halting here");
    loop {
        nix::unistd::pause();
    }
}
