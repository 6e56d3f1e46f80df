//! The hardware watchdog. PID 1 pets it from its event loop, so a wedged PID 1 (or kernel)
//! gets the machine reset; a clean shutdown disarms it with the magic close just before
//! reboot(2), so a halted machine stays halted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::Duration;

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);

pub const DEVICE: &str = "/dev/watchdog";

struct Dog {
    file: File,
    interval: Duration,
    next: Duration,
}

static DOG: Mutex<Option<Dog>> = Mutex::new(None);

fn dog() -> std::sync::MutexGuard<'static, Option<Dog>> {
    DOG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open the watchdog with `timeout` (whole seconds, at least 2); returns the timeout the
/// driver accepted.
pub fn arm(timeout: Duration, now: Duration) -> Result<Duration, String> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(DEVICE)
        .map_err(|e| format!("cannot open {DEVICE}: {e}"))?;
    let mut secs = timeout.as_secs().clamp(2, i32::MAX as u64) as libc::c_int;
    // SAFETY: the ioctl reads and writes one int.
    if let Err(e) = unsafe { wdioc_settimeout(file.as_raw_fd(), &mut secs) } {
        log::warn!(
            "{DEVICE}: cannot set a {}s timeout ({e}); keeping the driver's",
            timeout.as_secs()
        );
    }
    let timeout = Duration::from_secs(secs.max(2) as u64);
    // Pet at a third of the timeout: the loop may be busy for a moment (a container start).
    let interval = timeout / 3;
    *dog() = Some(Dog {
        file,
        interval,
        next: now,
    });
    pet(now);
    Ok(timeout)
}

/// Pet if due; returns when it is next due (None without a watchdog).
pub fn pet(now: Duration) -> Option<Duration> {
    let mut guard = dog();
    let d = guard.as_mut()?;
    if now >= d.next {
        keepalive(d);
        d.next = now.saturating_add(d.interval);
    }
    Some(d.next)
}

/// Pet now, whenever it is due (before the last, blocking steps of a shutdown).
pub fn pet_now() {
    if let Some(d) = dog().as_mut() {
        keepalive(d);
    }
}

fn keepalive(d: &mut Dog) {
    let mut dummy: libc::c_int = 0;
    // SAFETY: the ioctl writes one int.
    if unsafe { wdioc_keepalive(d.file.as_raw_fd(), &mut dummy) }.is_err() {
        let _ = d.file.write(b"\0");
    }
}

/// Disarm: the magic close ('V', then close). Drivers built with nowayout ignore it.
pub fn disarm() {
    if let Some(mut d) = dog().take() {
        let _ = d.file.write(b"V");
    }
}
