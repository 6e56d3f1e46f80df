//! The driver: owns the state machine, the runtime and the per-unit plumbing (sd_notify
//! sockets, ready files, reaping), and turns the machine's actions into syscalls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cmdline::Options;
use super::containers::Bundle;
use super::control::Answer;
use super::output::{Console, Outputs};
use super::{parse_request, shutdown, shutdown_for_signal, CGROUP_PARENT, INITCTL};
use crate::ctl::{BootEvent, Data, LogLine, Request, Response, ServiceInfo};
use crate::logging::capture::{Ring, Stream};
use crate::runtime::{Handle, Runtime, Stdio};
use crate::supervisor::{
    Action, Event, Exit, Kind, Level, Machine, Readiness, ShutdownKind, StopSignal, UnitId, UnitState,
};

pub const TOKEN_SIGNAL: u64 = 1;
pub const TOKEN_TIMER: u64 = 2;
pub const TOKEN_INITCTL: u64 = 3;
/// Plus the unit id: a service's sd_notify socket.
pub const TOKEN_NOTIFY: u64 = 1 << 32;
/// Host directory of the per-service sd_notify sockets.
pub const NOTIFY_ROOT: &str = "/run/keel/notify";
pub const TOKEN_KMSG: u64 = 5;
/// `keel ctl logs` names that are not units.
pub const KEEL_LOG: &str = "keel";
pub const KERNEL_LOG: &str = "kernel";
const KEEL_LOG_ID: UnitId = usize::MAX;
const KERNEL_LOG_ID: UnitId = usize::MAX - 1;
const KERNEL_RING_BYTES: usize = 64 * 1024;
/// How often ready files are looked for while a service waits on one.
pub const READY_FILE_POLL: Duration = Duration::from_millis(100);
/// How often a reaped container's cgroup is looked at while what it left behind dies, and
/// how long that may take before it is deleted anyway.
const DRAIN_POLL: Duration = Duration::from_millis(10);
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A container whose init was reaped while its cgroup still held processes: they were sent
/// SIGKILL; it is deleted, and its exit reported, once they are gone.
struct Draining {
    id: UnitId,
    handle: Handle,
    exit: Exit,
    since: Duration,
}

/// The supervisor, the runtime and the fds that feed them.
pub struct Driver {
    pub(super) machine: Machine,
    bundles: Vec<Bundle>,
    runtime: Result<Runtime, String>,
    running: HashMap<UnitId, Handle>,
    by_pid: HashMap<Pid, UnitId>,
    draining: Vec<Draining>,
    epoch: Instant,
    epoch_uptime: Duration,
    pub(super) queue: VecDeque<Event>,
    initctl_buf: Vec<u8>,
    pub(super) epoll: Rc<Epoll>,
    /// sd_notify sockets of the services that use them, kept across restarts.
    notify: HashMap<UnitId, UnixDatagram>,
    /// Last STATUS= each service sent.
    status: HashMap<UnitId, String>,
    outputs: Outputs,
    /// Units whose last run ended with an OOM kill in their cgroup.
    oom: HashSet<UnitId>,
    /// Health-check processes running, by PID.
    health_pids: HashMap<Pid, UnitId>,
    /// The kernel log (/dev/kmsg), kept for `keel ctl logs kernel`.
    kmsg: Option<fs::File>,
    kernel_log: Ring,
    /// First run of each unit: start, end (ready or exit), result; for `keel ctl boot`.
    timeline: Vec<Option<(Duration, Option<Duration>, String)>>,
}

impl Driver {
    pub fn new(
        bundles: Vec<Bundle>,
        opts: &Options,
        state_root: &Path,
        log_dir: &Path,
        console: Option<Console>,
        epoll: Rc<Epoll>,
    ) -> Self {
        let specs = bundles.iter().map(|b| b.spec.clone()).collect();
        let names = bundles
            .iter()
            .map(|b| {
                let stem = match b.spec.kind {
                    Kind::Service => b.spec.name.clone(),
                    k => format!("{k}-{}", b.spec.name),
                };
                (b.spec.name.clone(), stem, b.spec.console)
            })
            .collect();
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
            draining: Vec::new(),
            epoch: Instant::now(),
            epoch_uptime: Duration::from_secs_f64(crate::logging::uptime()),
            queue: VecDeque::new(),
            initctl_buf: Vec::new(),
            epoll,
            notify: HashMap::new(),
            status: HashMap::new(),
            outputs: Outputs::new(
                names,
                log_dir,
                console,
                opts.syslog.clone().map(crate::logging::syslog::Forwarder::new),
            ),
            timeline: Vec::new(),
            oom: HashSet::new(),
            health_pids: HashMap::new(),
            kmsg: None,
            kernel_log: Ring::new(KERNEL_RING_BYTES),
        }
    }

    pub(super) fn read_output(&mut self, token: u64) {
        if let Some((id, stream)) = Outputs::token(token) {
            let now = self.now();
            self.outputs.read(id, stream, &self.epoll, now);
        }
    }

    /// The syslog socket is ready for what the forwarder waits on.
    pub(super) fn syslog_ready(&mut self) {
        let now = self.now();
        if let Some(f) = self.outputs.syslog() {
            f.ready(&self.epoll, now);
        }
    }

    /// Send what the loop step queued (container lines, PID 1's own messages).
    pub(super) fn syslog_flush(&mut self) {
        let now = self.now();
        if let Some(f) = self.outputs.syslog() {
            f.flush(&self.epoll, now);
        }
    }

    /// When the forwarder wants to retry a destination that was down.
    pub(super) fn syslog_deadline(&mut self) -> Option<Duration> {
        self.outputs.syslog().and_then(|f| f.deadline())
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
    pub(super) fn read_notify(&mut self, id: UnitId) {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        let mut alive = false;
        while let Some(sock) = self.notify.get(&id) {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) => ready = true,
                    Some(("WATCHDOG", "1")) => alive = true,
                    Some(("STATUS", text)) => {
                        let text: String = text.chars().take(200).collect();
                        log::debug!("service {}: status {text:?}", self.bundles[id].spec.name);
                        self.status.insert(id, text);
                    }
                    _ => {}
                }
            }
        }
        if alive {
            self.queue.push_back(Event::Watchdog(id));
        }
        if ready {
            self.queue.push_back(Event::Ready(id));
        }
    }

    /// Look for the ready files of services waiting on one; true while any still waits.
    pub(super) fn poll_ready_files(&mut self) -> bool {
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

    /// Time since boot: the clock of the console log, the log files and `keel ctl`.
    pub(super) fn now(&self) -> Duration {
        self.epoch_uptime + self.epoch.elapsed()
    }

    /// Feed events (and what they cause) through the machine until it settles.
    pub(super) fn pump(&mut self, first: Option<Event>) {
        let now = self.now();
        let mut actions: VecDeque<Action> = match first {
            Some(e) => {
                self.observe(&e);
                self.machine.handle(now, e).into()
            }
            None => self.machine.tick(now).into(),
        };
        loop {
            while let Some(a) = actions.pop_front() {
                self.execute(a);
            }
            match self.queue.pop_front() {
                Some(e) => {
                    self.observe(&e);
                    actions.extend(self.machine.handle(self.now(), e))
                }
                None => break,
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Start(id) => self.start(id),
            Action::RunHealthcheck(id) => self.run_healthcheck(id),
            Action::KillHealthcheck(id) => {
                for (&pid, _) in self.health_pids.iter().filter(|(_, &u)| u == id) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
            Action::Signal(id, sig) => {
                let sig = match sig {
                    StopSignal::Term => {
                        Signal::try_from(self.bundles[id].spec.stop_signal).unwrap_or(Signal::SIGTERM)
                    }
                    StopSignal::Abort => Signal::SIGABRT,
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
                let now = self.now();
                self.outputs.close(id, &self.epoll, now);
            }
            Action::Log(Level::Ok, m) => log::info!(target: crate::logging::OK, "{m}"),
            Action::Log(Level::Info, m) => log::info!("{m}"),
            Action::Log(Level::Warn, m) => log::warn!("{m}"),
            Action::Log(Level::Error, m) => log::error!("{m}"),
            Action::Finish(kind) => {
                log::info!("all containers stopped; {kind}");
                // Last words to syslog, as far as the socket takes them without waiting.
                self.syslog_flush();
                // Nothing keeps the log filesystem busy: it unmounts cleanly.
                self.outputs.close_files();
                shutdown::finish(kind)
            }
        }
    }

    fn run_healthcheck(&mut self, id: UnitId) {
        let b = &self.bundles[id];
        let Some(check) = &b.spec.service.healthcheck else {
            return;
        };
        let result = match (self.running.get(&id), &self.runtime) {
            (Some(h), Ok(rt)) => rt.exec(h, &check.command).map_err(|e| e.to_string()),
            (None, _) => Err("the service is not running".into()),
            (_, Err(e)) => Err(e.clone()),
        };
        match result {
            Ok(pid) => {
                self.health_pids.insert(pid, id);
            }
            Err(e) => {
                log::warn!("service {}: cannot run its health check: {e}", b.spec.name);
                self.queue.push_back(Event::Health(id, false));
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
        let notify = b.spec.kind == Kind::Service
            && (b.spec.service.readiness == Readiness::Notify || b.spec.service.watchdog.is_some());
        let notify_dir = if notify {
            match self.notify_dir(id) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.queue.push_back(Event::StartFailed(id, e));
                    return;
                }
            }
        } else {
            None
        };
        let now = self.now();
        let (stdout, stderr) = match self.outputs.open(id, &self.epoll, now) {
            Ok((o, e)) => (Some(o), Some(e)),
            Err(e) => {
                log::warn!(
                    "{} {}: {e}; its output goes nowhere",
                    self.bundles[id].spec.kind,
                    self.bundles[id].spec.name
                );
                (None, None)
            }
        };
        let b = &self.bundles[id];
        let stdio = Stdio {
            stdin,
            stdout,
            stderr,
            notify_dir,
        };
        let result = match &self.runtime {
            Ok(rt) => rt.run(&b.id, &b.path, stdio).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        if result.is_err() {
            self.outputs.close(id, &self.epoll, now);
        }
        let b = &self.bundles[id];
        match result {
            Ok(h) => {
                log::debug!("{} {}: pid {}", b.spec.kind, b.spec.name, h.pid);
                self.outputs.set_pid(id, h.pid.as_raw());
                self.by_pid.insert(h.pid, id);
                self.running.insert(id, h);
                self.queue.push_back(Event::Started(id));
            }
            Err(e) => self.queue.push_back(Event::StartFailed(id, e)),
        }
    }

    /// Reap every child that has exited: containers are reported, orphans just collected.
    pub(super) fn reap(&mut self) {
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
            if let Some(id) = self.health_pids.remove(&pid) {
                self.queue.push_back(Event::Health(id, exit.success()));
                continue;
            }
            match self.by_pid.remove(&pid) {
                Some(id) => {
                    // Before the cgroup is deleted: did the kernel's OOM killer act in it?
                    let oom = self
                        .cgroup_file(id, "memory.events")
                        .is_some_and(|t| oom_kills(&t) > 0);
                    if oom {
                        log::warn!(
                            "{} {} was killed by the out-of-memory killer (its memory limit)",
                            self.bundles[id].spec.kind,
                            self.bundles[id].spec.name
                        );
                        self.oom.insert(id);
                    } else {
                        self.oom.remove(&id);
                    }
                    let now = self.now();
                    self.outputs.close(id, &self.epoll, now);
                    // An onboot container may have mounted the persistent disk over /var/log.
                    if self.bundles[id].spec.kind == Kind::Onboot {
                        self.outputs.follow_log_dir(false);
                    }
                    match (self.running.remove(&id), &self.runtime) {
                        (Some(handle), Ok(rt)) if rt.leftovers(&handle) => {
                            rt.kill_leftovers(&handle);
                            self.draining.push(Draining {
                                id,
                                handle,
                                exit,
                                since: now,
                            })
                        }
                        (Some(handle), Ok(rt)) => {
                            if let Err(e) = rt.delete(handle) {
                                log::warn!("{e}");
                            }
                            self.queue.push_back(Event::Exited(id, exit));
                        }
                        _ => self.queue.push_back(Event::Exited(id, exit)),
                    }
                }
                None => log::debug!("reaped orphan {pid} ({exit})"),
            }
        }
    }

    /// Delete the containers whose leftover processes are gone (or had their time), and
    /// report their exits.
    pub(super) fn drain(&mut self) {
        let Ok(rt) = &self.runtime else { return };
        let now = self.now();
        let mut i = 0;
        while i < self.draining.len() {
            let busy = rt.leftovers(&self.draining[i].handle);
            if busy && now.saturating_sub(self.draining[i].since) < DRAIN_LIMIT {
                // Again: without cgroup.kill, a process forked meanwhile escaped the last round.
                rt.kill_leftovers(&self.draining[i].handle);
                i += 1;
                continue;
            }
            let d = self.draining.swap_remove(i);
            if busy {
                let b = &self.bundles[d.id];
                log::error!(
                    "{} {}: processes it left behind still alive {} after SIGKILL; deleting it anyway",
                    b.spec.kind,
                    b.spec.name,
                    crate::duration::human(DRAIN_LIMIT)
                );
            }
            if let Err(e) = rt.delete(d.handle) {
                log::warn!("{e}");
            }
            self.queue.push_back(Event::Exited(d.id, d.exit));
        }
    }

    /// When `drain` should look again.
    pub(super) fn drain_deadline(&self) -> Option<Duration> {
        (!self.draining.is_empty()).then(|| self.now() + DRAIN_POLL)
    }

    pub(super) fn read_initctl(&mut self, f: &mut fs::File) {
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

    pub(super) fn on_signal(&mut self, sig: i32) {
        if sig == Signal::SIGCHLD as i32 {
            self.reap();
        } else if sig == Signal::SIGHUP as i32 {
            log::info!("SIGHUP: reopening the log files");
            self.outputs.follow_log_dir(true);
        } else if let Some(kind) = shutdown_for_signal(sig) {
            log::info!("{kind} requested by {}", crate::supervisor::signal_name(sig));
            self.queue.push_back(Event::Shutdown(kind));
        } else {
            log::debug!("ignoring {}", crate::supervisor::signal_name(sig));
        }
    }
}

/// What `keel ctl` asks of the driver.
impl Driver {
    /// Keep the first run of every unit for the boot timeline.
    fn observe(&mut self, e: &Event) {
        let now = self.now();
        if self.timeline.len() < self.bundles.len() {
            self.timeline.resize(self.bundles.len(), None);
        }
        let (id, end, result) = match e {
            Event::Started(id) => {
                if self.timeline[*id].is_none() {
                    self.timeline[*id] = Some((now, None, "running".into()));
                }
                let ready = self.bundles[*id].spec.kind == Kind::Service
                    && self.bundles[*id].spec.service.readiness == Readiness::Started;
                if !ready {
                    return;
                }
                (*id, now, "ready".to_string())
            }
            Event::Ready(id) => (*id, now, "ready".into()),
            Event::Health(id, true) if self.bundles[*id].spec.service.readiness == Readiness::Healthcheck => {
                (*id, now, "ready".into())
            }
            Event::Exited(id, exit) => (*id, now, exit.to_string()),
            Event::StartFailed(id, why) => {
                if self.timeline[*id].is_none() {
                    self.timeline[*id] = Some((now, None, String::new()));
                }
                (*id, now, format!("failed to start: {why}"))
            }
            _ => return,
        };
        if let Some(Some((_, slot @ None, r))) = self.timeline.get_mut(id) {
            *slot = Some(end);
            *r = result;
        }
    }

    fn unit_by_name(&self, name: &str) -> Option<UnitId> {
        self.machine
            .find(name)
            .or_else(|| self.bundles.iter().position(|b| b.spec.name == name))
    }

    fn cgroup_file(&self, id: UnitId, file: &str) -> Option<String> {
        let cg = self.running.get(&id)?.cgroup.as_ref()?;
        let path = Path::new("/sys/fs/cgroup")
            .join(cg.strip_prefix("/").unwrap_or(cg))
            .join(file);
        fs::read_to_string(path).ok()
    }

    fn cgroup_value(&self, id: UnitId, file: &str) -> Option<u64> {
        self.cgroup_file(id, file)?.trim().parse().ok()
    }

    fn service_info(&self, id: UnitId) -> ServiceInfo {
        let now = self.now();
        let info = self.machine.info(id);
        let spec = info.spec;
        let reason = match info.state {
            UnitState::Failed { reason, .. } => Some(reason.clone()),
            UnitState::Waiting if !spec.service.depends_on.is_empty() => {
                Some(format!("waiting for {}", spec.service.depends_on.join(", ")))
            }
            UnitState::Backoff { until } => Some(format!(
                "restarting in {}",
                crate::duration::human(until.saturating_sub(now))
            )),
            _ => None,
        };
        let (uptime_ms, ready) = match info.state {
            UnitState::Running { since, ready } => {
                (Some(now.saturating_sub(*since).as_millis() as u64), *ready)
            }
            _ => (None, false),
        };
        ServiceInfo {
            name: spec.name.clone(),
            kind: spec.kind.to_string(),
            state: info.state.word().into(),
            pid: self.running.get(&id).map(|h| h.pid.as_raw()),
            uptime_ms,
            restarts: info.restarts,
            last_exit: info.last_exit.map(|e| {
                let oom = self.oom.contains(&id).then_some("out of memory");
                match oom.or(info.last_reason) {
                    Some(why) => format!("{e} ({why})"),
                    None => e.to_string(),
                }
            }),
            ready,
            health: info.health.clone(),
            status: self.status.get(&id).cloned(),
            reason,
            memory_bytes: self.cgroup_value(id, "memory.current"),
            pids: self.cgroup_value(id, "pids.current"),
        }
    }

    fn boot_timeline(&self) -> Vec<BootEvent> {
        let ms = |d: Duration| d.as_millis() as u64;
        let started = Duration::from_millis(super::STARTED_MS.load(std::sync::atomic::Ordering::Relaxed));
        let mut out = vec![
            BootEvent {
                name: "kernel".into(),
                kind: "phase".into(),
                start_ms: 0,
                duration_ms: Some(ms(started)),
                result: "started keel".into(),
            },
            BootEvent {
                name: "base system".into(),
                kind: "phase".into(),
                start_ms: ms(started),
                duration_ms: Some(ms(self.epoch_uptime.saturating_sub(started))),
                result: "mounted, set up".into(),
            },
        ];
        for (id, t) in self.timeline.iter().enumerate() {
            if let Some((start, end, result)) = t {
                out.push(BootEvent {
                    name: self.bundles[id].spec.name.clone(),
                    kind: self.bundles[id].spec.kind.to_string(),
                    start_ms: ms(*start),
                    duration_ms: end.map(|e| ms(e.saturating_sub(*start))),
                    result: result.clone(),
                });
            }
        }
        out
    }

    /// The unit's log lines after `seq`, and the new last sequence number.
    fn ring(&self, id: UnitId) -> Option<&Ring> {
        match id {
            KERNEL_LOG_ID => Some(&self.kernel_log),
            id => self.outputs.ring(id),
        }
    }

    /// A follower's next lines: those after `after`, about FOLLOW_BATCH bytes of text at
    /// most, and the sequence number of the last one given (the rest come in later batches).
    pub(super) fn log_lines(&self, id: UnitId, after: u64) -> (Vec<LogLine>, u64) {
        if id == KEEL_LOG_ID {
            return crate::logging::with_own(|r| follow_batch(r.since(after).1, r.last_seq()));
        }
        match self.ring(id) {
            Some(ring) => follow_batch(ring.since(after).1, ring.last_seq()),
            None => (Vec::new(), after),
        }
    }

    pub(super) fn answer(&mut self, req: Request) -> Answer {
        let reply = |d: Data| Answer::Reply(Response::Ok(d));
        let no_such =
            |what: &str, name: &str| Answer::Reply(Response::Err(format!("no such {what}: {name}")));
        match req {
            Request::List => reply(Data::Services(
                (0..self.bundles.len()).map(|id| self.service_info(id)).collect(),
            )),
            Request::Status { name } => match self.unit_by_name(&name) {
                Some(id) => reply(Data::Service(self.service_info(id))),
                None => no_such("unit", &name),
            },
            Request::Start { name } | Request::Stop { name } | Request::Restart { name }
                if self.machine.find(&name).is_none() =>
            {
                no_such("service", &name)
            }
            Request::Start { name } => self.user(Event::UserStart, &name, "starting"),
            Request::Stop { name } => self.user(Event::UserStop, &name, "stopping"),
            Request::Restart { name } => self.user(Event::UserRestart, &name, "restarting"),
            Request::Logs { name, follow, lines } => {
                let id = match (self.unit_by_name(&name), name.as_str()) {
                    (Some(id), _) => id,
                    (None, KEEL_LOG) => KEEL_LOG_ID,
                    (None, KERNEL_LOG) => KERNEL_LOG_ID,
                    (None, _) => return no_such("unit", &name),
                };
                if id == KEEL_LOG_ID {
                    let n = lines.unwrap_or(100) as usize;
                    let (backlog, last) =
                        crate::logging::with_own(|r| (r.last(n).map(log_line).collect(), r.last_seq()));
                    let resp = Response::Ok(Data::Logs(backlog));
                    return if follow {
                        Answer::Follow(resp, id, last)
                    } else {
                        Answer::Reply(resp)
                    };
                }
                let Some(ring) = self.ring(id) else {
                    return no_such("unit", &name);
                };
                let n = lines.unwrap_or(100) as usize;
                let backlog: Vec<LogLine> = ring.last(n).map(log_line).collect();
                let resp = Response::Ok(Data::Logs(backlog));
                if follow {
                    Answer::Follow(resp, id, ring.last_seq())
                } else {
                    Answer::Reply(resp)
                }
            }
            Request::Boot => reply(Data::Boot(self.boot_timeline())),
            Request::Poweroff => self.request_shutdown(ShutdownKind::Poweroff),
            Request::Reboot => self.request_shutdown(ShutdownKind::Reboot),
            Request::Halt => self.request_shutdown(ShutdownKind::Halt),
        }
    }

    fn user(&mut self, ev: fn(UnitId) -> Event, name: &str, verb: &str) -> Answer {
        if let Some(id) = self.machine.find(name) {
            self.queue.push_back(ev(id));
        }
        Answer::Reply(Response::Ok(Data::Done(format!("{verb} {name}"))))
    }

    fn request_shutdown(&mut self, kind: ShutdownKind) -> Answer {
        log::info!("{kind} requested through {}", crate::ctl::SOCKET);
        self.queue.push_back(Event::Shutdown(kind));
        Answer::Reply(Response::Ok(Data::Done(format!("{kind} requested"))))
    }
}

/// Text per batch sent to a follower. A follower is sent its next batch only once it has
/// taken the last one, so one that stops reading costs PID 1 no more than this.
const FOLLOW_BATCH: usize = 16 * 1024;

fn follow_batch<'a>(
    entries: impl Iterator<Item = &'a crate::logging::capture::Entry>,
    last_seq: u64,
) -> (Vec<LogLine>, u64) {
    let mut lines = Vec::new();
    let mut bytes = 0;
    for e in entries {
        lines.push(log_line(e));
        bytes += e.text.len();
        if bytes >= FOLLOW_BATCH {
            return (lines, e.seq);
        }
    }
    (lines, last_seq)
}

fn log_line(e: &crate::logging::capture::Entry) -> LogLine {
    LogLine {
        seq: e.seq,
        ts_ms: e.ts.as_millis() as u64,
        stream: e.stream.tag().into(),
        text: e.text.clone(),
    }
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::oom_kills;

    #[test]
    fn oom_kill_count() {
        let ev = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(ev), 2);
        assert_eq!(oom_kills("low 0\n"), 0);
        assert_eq!(oom_kills("oom_kill x"), 0);
    }
}

/// The kernel log.
impl Driver {
    /// Follow /dev/kmsg from the start of the kernel's buffer (the boot messages too).
    pub(super) fn open_kmsg(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg");
        match f {
            Ok(f) => {
                if self
                    .epoll
                    .add(f.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_KMSG))
                    .is_ok()
                {
                    self.kmsg = Some(f);
                    self.read_kmsg();
                }
            }
            Err(e) => log::debug!("cannot read /dev/kmsg: {e}"),
        }
    }

    /// One record per read; records overwritten before we read them (EPIPE) are skipped.
    pub(super) fn read_kmsg(&mut self) {
        let Some(f) = self.kmsg.as_mut() else { return };
        let mut buf = [0u8; 8192];
        for _ in 0..1024 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some((ts, stream, text)) = kmsg_record(&buf[..n]) {
                        self.kernel_log.push(ts, stream, &text);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
    }
}

/// `PRIO,SEQ,MICROS,FLAGS;TEXT\n...`: the time, warnings and worse as stderr, the text.
fn kmsg_record(rec: &[u8]) -> Option<(Duration, Stream, String)> {
    let text = String::from_utf8_lossy(rec);
    let (head, body) = text.split_once(';')?;
    let mut fields = head.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let micros: u64 = fields.nth(1)?.parse().ok()?;
    let msg = body.lines().next().unwrap_or("").to_string();
    let stream = if prio & 7 <= 4 {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    Some((Duration::from_micros(micros), stream, msg))
}

#[cfg(test)]
mod kmsg_tests {
    use super::*;

    #[test]
    fn kmsg_records() {
        let (ts, stream, text) =
            kmsg_record(b"6,339,5140900,-;NET: Registered PF_PACKET\n SUBSYSTEM=net\n").unwrap();
        assert_eq!(ts, Duration::from_micros(5_140_900));
        assert_eq!(stream, Stream::Stdout);
        assert_eq!(text, "NET: Registered PF_PACKET");
        assert_eq!(kmsg_record(b"3,1,2,-;oops").unwrap().1, Stream::Stderr);
        assert!(kmsg_record(b"garbage").is_none());
        assert!(kmsg_record(b"x,1,2,-;t").is_none());
    }
}
