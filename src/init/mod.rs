//! PID 1: boot phases, then a single-threaded event loop (epoll over a signalfd, a timerfd
//! and the initctl FIFO) that drives the supervisor state machine and the runtime.

pub mod cmdline;
pub mod containers;
pub mod control;
pub mod dev;
pub mod driver;
pub mod mounts;
pub mod output;
pub mod shutdown;
pub mod system;
pub mod watchdog;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::supervisor::{Event, Kind, ShutdownKind, UnitId};
use cmdline::Options;
use driver::{Driver, READY_FILE_POLL, TOKEN_INITCTL, TOKEN_NOTIFY, TOKEN_SIGNAL, TOKEN_TIMER};

/// Where the image's bundles live.
pub const CONTAINERS: &str = "/containers";
/// Write `poweroff`, `reboot` or `halt` (one per line) here to ask PID 1 to shut down.
pub const INITCTL: &str = "/run/keel/initctl";
pub const STATE_ROOT: &str = "/run/keel/containers";
pub const CGROUP_PARENT: &str = "keel";
/// Per-unit log files: `<name>.log` for services, `onboot-<name>.log`, `onshutdown-<name>.log`.
pub const LOG_DIR: &str = "/var/log";

/// Milliseconds since boot at which PID 1 started, for the boot timeline.
pub static STARTED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot set up the event loop: {what}: {errno}")]
    EventLoop { what: &'static str, errno: nix::Error },
}

fn ev(what: &'static str) -> impl FnOnce(nix::Error) -> InitError {
    move |errno| InitError::EventLoop { what, errno }
}

/// Signals PID 1 takes from its signalfd. Faults stay unblocked: a blocked SIGSEGV kills anyway.
fn handled_signals() -> SigSet {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        set.remove(s);
    }
    set
}

/// The request a signal means, by the conventions of busybox init.
pub fn shutdown_for_signal(sig: i32) -> Option<ShutdownKind> {
    match Signal::try_from(sig).ok()? {
        Signal::SIGUSR2 | Signal::SIGTERM | Signal::SIGPWR => Some(ShutdownKind::Poweroff),
        Signal::SIGINT => Some(ShutdownKind::Reboot),
        Signal::SIGUSR1 => Some(ShutdownKind::Halt),
        _ => None,
    }
}

pub fn parse_request(line: &str) -> Option<ShutdownKind> {
    match line.trim() {
        "poweroff" => Some(ShutdownKind::Poweroff),
        "reboot" => Some(ShutdownKind::Reboot),
        "halt" => Some(ShutdownKind::Halt),
        _ => None,
    }
}

/// Entry point when running as PID 1 of the machine. Never returns.
pub fn main() -> ! {
    pid1(None)
}

/// PID 1. `dev_cmdline` is set in development mode (`keel init --root`): PID 1 of fresh
/// namespaces on a host, logging to stderr and taking its options from the caller.
pub fn pid1(dev_cmdline: Option<String>) -> ! {
    crate::logging::init(false);
    // Before anything else: from here on no signal is lost, and none can kill us.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None);
    std::panic::set_hook(Box::new(|info| log::error!("internal error: {info}")));
    log::info!("keel {} starting as PID 1", env!("CARGO_PKG_VERSION"));
    STARTED_MS.store(
        (crate::logging::uptime() * 1000.0) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    if dev_cmdline.is_some() {
        shutdown::DEV_MODE.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    let opts = match catch_unwind(|| boot(Path::new("/"), dev_cmdline.clone())) {
        Ok(opts) => opts,
        Err(_) => {
            log::error!("internal error during boot set-up; continuing with defaults");
            Options::default()
        }
    };
    let err = match run(opts, Path::new(CONTAINERS)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    log::error!("{err}; cannot supervise anything, rebooting");
    shutdown::finish(ShutdownKind::Reboot)
}

/// Bring up the base system. Every step that fails is reported and skipped: a degraded
/// system that says what is wrong beats a kernel panic.
fn boot(root: &Path, dev_cmdline: Option<String>) -> Options {
    let dev = dev_cmdline.is_some();
    if let Some(c) = &dev_cmdline {
        crate::fault::set(c);
    }
    if !dev {
        match system::leave_initramfs() {
            Ok(true) => log::debug!("initramfs root bind-mounted onto itself"),
            Ok(false) => {}
            Err(e) => log::error!("{e}; containers will not be able to pivot_root"),
        }
    }
    let mut mount_errors = mounts::mount_base(root);
    if let Err(e) = mounts::share(root, &root.join(CONTAINERS.trim_start_matches('/'))) {
        mount_errors.push(e);
    }
    if !dev {
        crate::logging::open_console();
    }
    system::ensure_stdio();
    for e in &mount_errors {
        log::error!("{e}");
    }

    let cmdline = dev_cmdline.unwrap_or_else(|| fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let opts = cmdline::parse(&cmdline);
    if opts.quiet {
        crate::logging::set_quiet();
    } else {
        crate::logging::set_debug(opts.debug);
    }
    for w in &opts.warnings {
        log::warn!("{w}");
    }
    let mounted: Vec<_> = mounts::BASE.iter().map(|m| m.target).collect();
    if mount_errors.is_empty() {
        log::info!(target: crate::logging::OK, "mounted {}", mounted.join(" "));
    }

    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        log::debug!("cannot route ctrl-alt-del to PID 1: {e}");
    }
    let steps: [(&str, Result<(), String>); 4] = [
        (
            "hostname",
            system::set_hostname(root)
                .map(|h| log::info!("hostname {h}"))
                .map_err(|e| e.to_string()),
        ),
        ("loopback", system::loopback_up().map_err(|e| e.to_string())),
        ("rlimits", system::set_rlimits().map_err(|e| e.to_string())),
        (
            "oom_score_adj",
            system::protect_from_oom().map_err(|e| e.to_string()),
        ),
    ];
    for (what, r) in steps {
        if let Err(e) = r {
            log::warn!("{what}: {e}");
        }
    }
    let cgroot = root.join("sys/fs/cgroup");
    match system::enable_controllers(&cgroot) {
        Ok(c) => {
            log::debug!("cgroup controllers: {}", c.join(" "));
            let ours = cgroot.join(CGROUP_PARENT);
            let made = if crate::fault::injected("cgroup", CGROUP_PARENT) {
                Err(std::io::Error::from(crate::fault::ERRNO))
            } else {
                fs::create_dir_all(&ours)
            };
            if let Err(e) = made {
                log::error!(
                    "cannot create cgroup {}: {e}; containers are not limited together",
                    ours.display()
                );
            } else {
                if let Err(e) = system::enable_controllers(&ours) {
                    log::warn!("{e}");
                }
                match system::limit_containers(&ours) {
                    Ok((mem, pids)) => log::debug!("containers together: memory.max {mem}, pids.max {pids}"),
                    Err(e) => log::warn!("{e}; containers together are not limited"),
                }
            }
        }
        Err(e) => log::error!("{e}; containers get no resource control"),
    }
    opts
}

fn open_initctl(path: &Path) -> Option<fs::File> {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::remove_file(path);
    if let Err(e) = nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)) {
        log::warn!(
            "cannot create {}: {e}; shut down with signals instead",
            path.display()
        );
        return None;
    }
    // Read-write so the FIFO never reports end-of-file when writers come and go.
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("cannot open {}: {e}", path.display());
            None
        }
    }
}

/// Discover the containers and supervise them until shutdown; returns only on a failure
/// to set up the event loop itself.
fn run(opts: Options, containers: &Path) -> Result<std::convert::Infallible, InitError> {
    let (bundles, warnings) = containers::discover(containers, &opts);
    for w in warnings {
        log::warn!("{w}");
    }
    let count = |k| bundles.iter().filter(|b| b.spec.kind == k).count();
    log::info!(
        "{} onboot, {} services, {} onshutdown containers in {}",
        count(Kind::Onboot),
        count(Kind::Service),
        count(Kind::Onshutdown),
        containers.display()
    );

    if crate::fault::injected("loop", "signalfd") {
        return Err(ev("signalfd")(crate::fault::ERRNO));
    }
    let sfd = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ev("signalfd"))?;
    let tfd = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(ev("timerfd"))?;
    let epoll = Rc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ev("epoll"))?);
    epoll
        .add(sfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL))
        .map_err(ev("epoll add signalfd"))?;
    epoll
        .add(tfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER))
        .map_err(ev("epoll add timerfd"))?;
    let mut initctl = open_initctl(Path::new(INITCTL));
    if let Some(f) = &initctl {
        if let Err(e) = epoll.add(f.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_INITCTL)) {
            log::warn!("cannot watch {INITCTL}: {e}");
        }
    }

    let console = match () {
        _ if opts.quiet => None,
        _ if shutdown::DEV_MODE.load(std::sync::atomic::Ordering::Relaxed) => output::Console::stderr(),
        _ => output::Console::open(),
    };
    let log_dir = Path::new(LOG_DIR);
    if let Err(e) = fs::create_dir_all(log_dir) {
        log::warn!("cannot create {LOG_DIR}: {e}; container output is kept in memory only");
    }
    let mut driver = Driver::new(
        bundles,
        &opts,
        &PathBuf::from(STATE_ROOT),
        log_dir,
        console,
        epoll.clone(),
    );
    if !shutdown::DEV_MODE.load(std::sync::atomic::Ordering::Relaxed) {
        driver.open_kmsg();
    }
    if let Some(t) = opts.watchdog {
        match watchdog::arm(t, driver.now()) {
            Ok(t) => log::info!(
                "watchdog {} armed: timeout {}",
                watchdog::DEVICE,
                crate::duration::human(t)
            ),
            Err(e) => log::warn!("{e}; running without a watchdog"),
        }
    }
    let mut control = match control::Control::open(Path::new(crate::ctl::SOCKET), &epoll) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("{e}; keel ctl will not work");
            None
        }
    };
    // Children that exited before the loop existed are still zombies: reap them now.
    driver.reap();
    driver.pump(Some(Event::Boot));

    let mut events = [EpollEvent::empty(); 8];
    loop {
        let now = driver.now();
        let ctl_due = control.as_mut().and_then(|c| c.expire(&epoll, now));
        let pet_due = watchdog::pet(now);
        let log_due = driver.syslog_deadline();
        match [
            driver.machine.next_deadline(),
            ctl_due,
            pet_due,
            log_due,
            driver.drain_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        {
            Some(d) => {
                let wait = d.saturating_sub(driver.now()).max(Duration::from_millis(1));
                let _ = tfd.set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                );
            }
            None => {
                let _ = tfd.unset();
            }
        }
        let timeout = if driver.poll_ready_files() {
            EpollTimeout::try_from(READY_FILE_POLL).unwrap_or(EpollTimeout::NONE)
        } else {
            EpollTimeout::NONE
        };
        if !driver.queue.is_empty() {
            driver.pump(None);
            continue;
        }
        let n = match driver.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("epoll_wait: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // A bug in one step must not take PID 1 down: it is reported and supervision goes on.
        let step = catch_unwind(AssertUnwindSafe(|| {
            for e in &events[..n] {
                match e.data() {
                    TOKEN_SIGNAL => {
                        while let Ok(Some(info)) = sfd.read_signal() {
                            driver.on_signal(info.ssi_signo as i32);
                        }
                    }
                    TOKEN_TIMER => {
                        let _ = tfd.wait();
                    }
                    TOKEN_INITCTL => {
                        if let Some(f) = initctl.as_mut() {
                            driver.read_initctl(f);
                        }
                    }
                    driver::TOKEN_KMSG => driver.read_kmsg(),
                    crate::logging::syslog::TOKEN => driver.syslog_ready(),
                    control::TOKEN_LISTEN => {
                        if let Some(c) = control.as_mut() {
                            let now = driver.now();
                            c.accept(&epoll, now, &mut |r| driver.answer(r));
                        }
                    }
                    t if t >= control::TOKEN_CLIENT => {
                        if let Some(c) = control.as_mut() {
                            let now = driver.now();
                            c.service(&epoll, (t - control::TOKEN_CLIENT) as usize, now, &mut |r| {
                                driver.answer(r)
                            });
                        }
                    }
                    t if t >= output::TOKEN_LOG => driver.read_output(t),
                    t if t >= TOKEN_NOTIFY => driver.read_notify((t - TOKEN_NOTIFY) as UnitId),
                    _ => {}
                }
            }
            driver.drain();
            let first = driver.queue.pop_front();
            driver.pump(first);
            if let Some(c) = control.as_mut() {
                c.feed_followers(&epoll, &|unit, after| driver.log_lines(unit, after));
            }
            driver.syslog_flush();
        }));
        if step.is_err() {
            log::error!("internal error in the event loop; carrying on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_signal_conventions() {
        assert_eq!(shutdown_for_signal(libc::SIGUSR2), Some(ShutdownKind::Poweroff));
        assert_eq!(shutdown_for_signal(libc::SIGTERM), Some(ShutdownKind::Poweroff));
        assert_eq!(shutdown_for_signal(libc::SIGINT), Some(ShutdownKind::Reboot));
        assert_eq!(shutdown_for_signal(libc::SIGUSR1), Some(ShutdownKind::Halt));
        assert_eq!(shutdown_for_signal(libc::SIGHUP), None);
        assert_eq!(shutdown_for_signal(9999), None);
    }

    #[test]
    fn initctl_requests() {
        assert_eq!(parse_request("poweroff\n"), Some(ShutdownKind::Poweroff));
        assert_eq!(parse_request(" reboot "), Some(ShutdownKind::Reboot));
        assert_eq!(parse_request("halt"), Some(ShutdownKind::Halt));
        assert_eq!(parse_request("rm -rf /"), None);
    }

    #[test]
    fn faults_are_never_blocked() {
        let s = handled_signals();
        assert!(s.contains(Signal::SIGCHLD) && s.contains(Signal::SIGTERM) && s.contains(Signal::SIGPIPE));
        assert!(!s.contains(Signal::SIGSEGV) && !s.contains(Signal::SIGBUS));
    }
}
