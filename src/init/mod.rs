//! PID 1: boot phases, then a single-threaded event loop (epoll over a signalfd, a timerfd
//! and the initctl FIFO) that drives the supervisor state machine and the runtime.

pub mod cmdline;
pub mod containers;
pub mod dev;
pub mod mounts;
pub mod shutdown;
pub mod system;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::runtime::{Handle, Runtime, Stdio};
use crate::supervisor::{
    Action, Event, Exit, Kind, Level, Machine, Readiness, ShutdownKind, StopSignal, UnitId, UnitState,
};
use cmdline::Options;
use containers::Bundle;

/// Where the image's bundles live.
pub const CONTAINERS: &str = "/containers";
/// Write `poweroff`, `reboot` or `halt` (one per line) here to ask PID 1 to shut down.
pub const INITCTL: &str = "/run/keel/initctl";
pub const STATE_ROOT: &str = "/run/keel/containers";
pub const CGROUP_PARENT: &str = "keel";

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
    if !dev {
        match system::leave_initramfs() {
            Ok(true) => log::debug!("initramfs root bind-mounted onto itself"),
            Ok(false) => {}
            Err(e) => log::error!("{e}; containers will not be able to pivot_root"),
        }
    }
    let mount_errors = mounts::mount_base(root);
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
        log::info!("mounted {}", mounted.join(" "));
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
            let _ = fs::create_dir_all(&ours);
            if let Err(e) = system::enable_controllers(&ours) {
                log::warn!("{e}");
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

const TOKEN_SIGNAL: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_INITCTL: u64 = 3;
/// Plus the unit id: a service's sd_notify socket.
const TOKEN_NOTIFY: u64 = 1 << 32;
/// Host directory of the per-service sd_notify sockets.
pub const NOTIFY_ROOT: &str = "/run/keel/notify";
/// How often ready files are looked for while a service waits on one.
const READY_FILE_POLL: Duration = Duration::from_millis(100);

/// The supervisor, the runtime and the fds that feed them.
pub struct Driver {
    machine: Machine,
    bundles: Vec<Bundle>,
    runtime: Result<Runtime, String>,
    running: HashMap<UnitId, Handle>,
    by_pid: HashMap<Pid, UnitId>,
    epoch: Instant,
    queue: VecDeque<Event>,
    initctl_buf: Vec<u8>,
    epoll: Epoll,
    /// sd_notify sockets of the services that use them, kept across restarts.
    notify: HashMap<UnitId, UnixDatagram>,
    /// Last STATUS= each service sent.
    status: HashMap<UnitId, String>,
}

impl Driver {
    pub fn new(bundles: Vec<Bundle>, opts: &Options, state_root: &Path, epoll: Epoll) -> Self {
        let specs = bundles.iter().map(|b| b.spec.clone()).collect();
        let runtime = Runtime::new(state_root, CGROUP_PARENT).map_err(|e| e.to_string());
        if let Err(e) = &runtime {
            log::error!("{e}; no container can start");
        }
        Driver {
            machine: Machine::new(specs, opts.onboot_failure),
            bundles,
            runtime,
            running: HashMap::new(),
            by_pid: HashMap::new(),
            epoch: Instant::now(),
            queue: VecDeque::new(),
            initctl_buf: Vec::new(),
            epoll,
            notify: HashMap::new(),
            status: HashMap::new(),
        }
    }

    /// The service's sd_notify socket directory, created (and watched) on first use.
    fn notify_dir(&mut self, id: UnitId) -> Result<PathBuf, String> {
        let dir = Path::new(NOTIFY_ROOT).join(&self.bundles[id].id);
        if self.notify.contains_key(&id) {
            return Ok(dir);
        }
        let path = dir.join("notify.sock");
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("sd_notify socket {}: {what}: {e}", path.display())
        };
        fs::create_dir_all(&dir).map_err(|e| fail("cannot create its directory", &e))?;
        let _ = fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).map_err(|e| fail("cannot bind", &e))?;
        sock.set_nonblocking(true)
            .map_err(|e| fail("cannot make non-blocking", &e))?;
        // The service may run as any user: the socket is only visible inside its container.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
        self.epoll
            .add(
                sock.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_NOTIFY + id as u64),
            )
            .map_err(|e| fail("cannot watch", &e))?;
        self.notify.insert(id, sock);
        Ok(dir)
    }

    /// Read what a service sent on its sd_notify socket.
    fn read_notify(&mut self, id: UnitId) {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Some(sock) = self.notify.get(&id) {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) => ready = true,
                    Some(("STATUS", text)) => {
                        let text: String = text.chars().take(200).collect();
                        log::debug!("service {}: status {text:?}", self.bundles[id].spec.name);
                        self.status.insert(id, text);
                    }
                    _ => {}
                }
            }
        }
        if ready {
            self.queue.push_back(Event::Ready(id));
        }
    }

    /// Look for the ready files of services waiting on one; true while any still waits.
    fn poll_ready_files(&mut self) -> bool {
        let mut waiting = false;
        for (&id, h) in &self.running {
            let Readiness::File(path) = &self.bundles[id].spec.service.readiness else {
                continue;
            };
            if !matches!(self.machine.state(id), UnitState::Running { ready: false, .. }) {
                continue;
            }
            if Path::new(&format!("/proc/{}/root{path}", h.pid)).exists() {
                self.queue.push_back(Event::Ready(id));
            } else {
                waiting = true;
            }
        }
        waiting
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Feed events (and what they cause) through the machine until it settles.
    fn pump(&mut self, first: Option<Event>) {
        let now = self.now();
        let mut actions: VecDeque<Action> = match first {
            Some(e) => self.machine.handle(now, e).into(),
            None => self.machine.tick(now).into(),
        };
        loop {
            while let Some(a) = actions.pop_front() {
                self.execute(a);
            }
            match self.queue.pop_front() {
                Some(e) => actions.extend(self.machine.handle(self.now(), e)),
                None => break,
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Start(id) => self.start(id),
            Action::Signal(id, sig) => {
                let sig = match sig {
                    StopSignal::Term => Signal::SIGTERM,
                    StopSignal::Kill => Signal::SIGKILL,
                };
                if let (Some(h), Ok(rt)) = (self.running.get_mut(&id), &self.runtime) {
                    let r = match sig {
                        Signal::SIGKILL => rt.kill_all(h),
                        s => rt.signal(h, s),
                    };
                    if let Err(e) = r {
                        log::warn!("{e}");
                    }
                }
            }
            Action::Abandon(id) => {
                if let Some(h) = self.running.remove(&id) {
                    self.by_pid.remove(&h.pid);
                }
            }
            Action::Log(Level::Info, m) => log::info!("{m}"),
            Action::Log(Level::Warn, m) => log::warn!("{m}"),
            Action::Log(Level::Error, m) => log::error!("{m}"),
            Action::Finish(kind) => {
                log::info!("all containers stopped; {kind}");
                shutdown::finish(kind)
            }
        }
    }

    fn start(&mut self, id: UnitId) {
        let b = &self.bundles[id];
        if b.spec.kind != Kind::Service {
            log::info!("running {} {}", b.spec.kind, b.spec.name);
        }
        // Output goes to the console; input never comes from it (a container must not
        // compete with a console login for keystrokes).
        let stdin = fs::File::open("/dev/null").ok().map(Into::into);
        let notify_dir = match b.spec.service.readiness {
            Readiness::Notify if b.spec.kind == Kind::Service => match self.notify_dir(id) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.queue.push_back(Event::StartFailed(id, e));
                    return;
                }
            },
            _ => None,
        };
        let b = &self.bundles[id];
        let stdio = Stdio {
            stdin,
            notify_dir,
            ..Stdio::default()
        };
        let result = match &self.runtime {
            Ok(rt) => rt.run(&b.id, &b.path, stdio).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok(h) => {
                log::debug!("{} {}: pid {}", b.spec.kind, b.spec.name, h.pid);
                self.by_pid.insert(h.pid, id);
                self.running.insert(id, h);
                self.queue.push_back(Event::Started(id));
            }
            Err(e) => self.queue.push_back(Event::StartFailed(id, e)),
        }
    }

    /// Reap every child that has exited: containers are reported, orphans just collected.
    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
            };
            match self.by_pid.remove(&pid) {
                Some(id) => {
                    if let (Some(h), Ok(rt)) = (self.running.remove(&id), &self.runtime) {
                        if let Err(e) = rt.delete(h) {
                            log::warn!("{e}");
                        }
                    }
                    self.queue.push_back(Event::Exited(id, exit));
                }
                None => log::debug!("reaped orphan {pid} ({exit})"),
            }
        }
    }

    fn read_initctl(&mut self, f: &mut fs::File) {
        let mut buf = [0u8; 256];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.initctl_buf.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        while let Some(pos) = self.initctl_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.initctl_buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            match parse_request(&text) {
                Some(kind) => {
                    log::info!("{kind} requested through {INITCTL}");
                    self.queue.push_back(Event::Shutdown(kind));
                }
                None => log::warn!(
                    "{INITCTL}: unknown request {:?} (expected poweroff, reboot or halt)",
                    text.trim()
                ),
            }
        }
        if self.initctl_buf.len() > 256 {
            log::warn!("{INITCTL}: request longer than 256 bytes dropped");
            self.initctl_buf.clear();
        }
    }

    fn on_signal(&mut self, sig: i32) {
        if sig == Signal::SIGCHLD as i32 {
            self.reap();
        } else if let Some(kind) = shutdown_for_signal(sig) {
            log::info!("{kind} requested by {}", crate::supervisor::signal_name(sig));
            self.queue.push_back(Event::Shutdown(kind));
        } else {
            log::debug!("ignoring {}", crate::supervisor::signal_name(sig));
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

    let sfd = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ev("signalfd"))?;
    let tfd = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(ev("timerfd"))?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ev("epoll"))?;
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

    let mut driver = Driver::new(bundles, &opts, &PathBuf::from(STATE_ROOT), epoll);
    // Children that exited before the loop existed are still zombies: reap them now.
    driver.reap();
    driver.pump(Some(Event::Boot));

    let mut events = [EpollEvent::empty(); 8];
    loop {
        match driver.machine.next_deadline() {
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
                    t if t >= TOKEN_NOTIFY => driver.read_notify((t - TOKEN_NOTIFY) as UnitId),
                    _ => {}
                }
            }
            let first = driver.queue.pop_front();
            driver.pump(first);
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
