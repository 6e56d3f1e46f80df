//! The boot and supervision state machine. Sans-IO: the driver feeds it events and the
//! current time, it answers with actions. No syscalls here, so every ordering, timeout and
//! policy is tested with a fake clock.
//!
//! Phases: onboot containers run one at a time, in order, each to completion (bounded by its
//! timeout); then services start, each as soon as the services it depends on are ready, and
//! are restarted with exponential backoff under a start limit; a shutdown request stops the
//! services in reverse dependency order (SIGTERM, then SIGKILL after their stop timeout, the
//! whole stop bounded), runs the onshutdown containers in order, and ends with
//! `Action::Finish`.

pub mod policy;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::duration::human;
use crate::init::cmdline::OnbootFailure;

/// Time since an arbitrary epoch, supplied by the driver (monotonic clock) or a test.
pub type Time = Duration;

/// After SIGKILL, how long to wait for the exit before giving up on a container.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// The longest the stopping of services may take at shutdown, whatever their timeouts.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(90);

pub use policy::{Backoff, Healthcheck, Readiness, Restart, ServicePolicy, StartLimit};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Onboot,
    Service,
    Onshutdown,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Onboot => "onboot",
            Kind::Service => "service",
            Kind::Onshutdown => "onshutdown",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    pub kind: Kind,
    /// Run limit for onboot/onshutdown containers; unused for services.
    pub timeout: Duration,
    /// Grace between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// The signal that asks the container to stop (StopSignal::Term stands for it).
    pub stop_signal: i32,
    /// Restart, dependencies and readiness; only services use it.
    pub service: ServicePolicy,
    /// Echo the container's output on the console (it is logged either way).
    pub console: bool,
}

impl UnitSpec {
    pub fn new(name: &str, kind: Kind) -> Self {
        UnitSpec {
            name: name.into(),
            kind,
            timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(10),
            stop_signal: libc::SIGTERM,
            service: ServicePolicy::default(),
            console: true,
        }
    }
}

/// How a container's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {}", signal_name(s)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("{sig}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownKind {
    Poweroff,
    Reboot,
    Halt,
}

impl fmt::Display for ShutdownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownKind::Poweroff => "poweroff",
            ShutdownKind::Reboot => "reboot",
            ShutdownKind::Halt => "halt",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// The unit's stop signal (SIGTERM unless configured).
    Term,
    /// SIGABRT, for a missed watchdog: a hung service's own stop handler cannot be trusted,
    /// and where core dumps are enabled it leaves one to debug the hang.
    Abort,
    Kill,
}

pub type UnitId = usize;

/// Why a unit is being stopped: decides what happens when it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    Shutdown,
    /// Run limit (onboot/onshutdown) or start timeout (service) expired: a failure.
    Timeout,
    /// `keel ctl stop`: stays stopped.
    User,
    /// `keel ctl restart`: started again at once.
    Restart,
    /// Its health check failed too often: a failure, restarted per its policy.
    Unhealthy,
    /// It sent no `WATCHDOG=1` within its watchdog time: a failure, restarted per its policy.
    Watchdog,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitState {
    Waiting,
    /// Start was asked of the runtime; Started or StartFailed follows.
    Starting,
    Running {
        since: Time,
        ready: bool,
    },
    /// A stop signal was sent at `since`; `killed` once SIGKILL went out.
    Stopping {
        since: Time,
        killed: bool,
        why: StopWhy,
    },
    /// Waiting out the restart delay.
    Backoff {
        until: Time,
    },
    /// Ended and will not run again (onboot, onshutdown, or a service not to be restarted).
    Exited {
        exit: Exit,
        timed_out: bool,
    },
    /// Stopped on request; `keel ctl start` runs it again.
    Stopped,
    /// Could not start, hit its start limit, never died, or a dependency failed
    /// (`blocked_by`).
    Failed {
        reason: String,
        blocked_by: Option<UnitId>,
    },
    /// Never run: the boot was stopped or the machine shut down first.
    Skipped,
}

impl UnitState {
    /// A short word for listings.
    pub fn word(&self) -> &'static str {
        match self {
            UnitState::Waiting => "waiting",
            UnitState::Starting => "starting",
            UnitState::Running { ready: true, .. } => "running",
            UnitState::Running { ready: false, .. } => "starting",
            UnitState::Stopping { .. } => "stopping",
            UnitState::Backoff { .. } => "backoff",
            UnitState::Exited {
                exit,
                timed_out: false,
            } if exit.success() => "exited",
            UnitState::Exited { .. } => "failed",
            UnitState::Stopped => "stopped",
            UnitState::Failed { .. } => "failed",
            UnitState::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The base system is up: begin with the onboot containers.
    Boot,
    /// The runtime created and started the unit's container.
    Started(UnitId),
    /// The runtime could not create or start it; the text names the cause.
    StartFailed(UnitId, String),
    /// The service said it is ready (sd_notify READY=1, or its ready file appeared).
    Ready(UnitId),
    /// The unit's container process was reaped.
    Exited(UnitId, Exit),
    /// A health check ended: passed or not.
    Health(UnitId, bool),
    /// The service sent `WATCHDOG=1`: it is alive.
    Watchdog(UnitId),
    /// poweroff / reboot / halt was requested.
    Shutdown(ShutdownKind),
    /// `keel ctl start|stop|restart NAME`.
    UserStart(UnitId),
    UserStop(UnitId),
    UserRestart(UnitId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something went as it should: started, ready, finished.
    Ok,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(UnitId),
    /// Run the service's health check inside its container; report with Event::Health.
    RunHealthcheck(UnitId),
    /// The health check overran its timeout: kill it (its Event::Health is then ignored).
    KillHealthcheck(UnitId),
    Signal(UnitId, StopSignal),
    /// The unit will never be reaped (stuck after SIGKILL): stop tracking it.
    Abandon(UnitId),
    Log(Level, String),
    /// Everything is stopped: sync, unmount and power off / reboot / halt.
    Finish(ShutdownKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotBooted,
    Onboot(UnitId),
    Up,
    StoppingServices { kind: ShutdownKind, deadline: Time },
    Onshutdown(UnitId, ShutdownKind),
    Finished,
}

struct Unit {
    spec: UnitSpec,
    state: UnitState,
    /// Resolved `depends_on`.
    deps: Vec<UnitId>,
    /// Recent start times, for the start limit.
    starts: VecDeque<Time>,
    /// Delay before the next restart (zero: none yet).
    delay: Duration,
    restarts: u32,
    last_exit: Option<Exit>,
    started_at: Option<Time>,
    health: Health,
    /// When the running service must have sent `WATCHDOG=1` by.
    watchdog_due: Option<Time>,
    /// Why the last run counted as a failure beyond its exit (watchdog, unhealthy...).
    last_reason: Option<String>,
}

/// Health-check bookkeeping for the current run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Health {
    /// When the next check is due.
    next: Option<Time>,
    /// A check is running since.
    running_since: Option<Time>,
    /// Consecutive failures.
    failures: u32,
    /// Result of the last check.
    last_ok: Option<bool>,
}

/// What `keel ctl` shows about a unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo<'a> {
    pub spec: &'a UnitSpec,
    pub state: &'a UnitState,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub started_at: Option<Time>,
    /// "healthy", "unhealthy (N failed)" or "starting", for services with a health check.
    pub health: Option<String>,
    /// Why the last run ended as a failure, when its exit alone does not say.
    pub last_reason: Option<&'a str>,
}

pub struct Machine {
    units: Vec<Unit>,
    phase: Phase,
    policy: OnbootFailure,
    out: Vec<Action>,
}

impl Machine {
    /// `units` in boot order: onboot containers in the order they must run, the services,
    /// then onshutdown containers in order. Unknown dependencies and dependency cycles fail
    /// the services concerned, with the reason.
    pub fn new(units: Vec<UnitSpec>, policy: OnbootFailure) -> Self {
        let mut m = Machine {
            units: units
                .into_iter()
                .map(|spec| Unit {
                    spec,
                    state: UnitState::Waiting,
                    deps: Vec::new(),
                    starts: VecDeque::new(),
                    delay: Duration::ZERO,
                    restarts: 0,
                    last_exit: None,
                    started_at: None,
                    health: Health::default(),
                    watchdog_due: None,
                    last_reason: None,
                })
                .collect(),
            phase: Phase::NotBooted,
            policy,
            out: Vec::new(),
        };
        m.resolve_dependencies();
        m
    }

    fn resolve_dependencies(&mut self) {
        let services: Vec<UnitId> = self.ids(Kind::Service).collect();
        for &id in &services {
            let mut deps = Vec::new();
            let mut unknown = Vec::new();
            for name in self.units[id].spec.service.depends_on.clone() {
                match services.iter().find(|&&s| self.units[s].spec.name == name) {
                    Some(&d) => deps.push(d),
                    None => unknown.push(name),
                }
            }
            self.units[id].deps = deps;
            if !unknown.is_empty() {
                self.units[id].state = UnitState::Failed {
                    reason: format!("depends on unknown service {}", unknown.join(", ")),
                    blocked_by: None,
                };
            }
        }
        // A service on a dependency cycle can never start.
        for &id in &services {
            if let Some(cycle) = self.cycle_from(id) {
                let names: Vec<_> = cycle.iter().map(|&u| self.units[u].spec.name.as_str()).collect();
                self.units[id].state = UnitState::Failed {
                    reason: format!("dependency cycle: {}", names.join(" -> ")),
                    blocked_by: None,
                };
            }
        }
    }

    /// The path of a dependency cycle through `start`, if there is one.
    fn cycle_from(&self, start: UnitId) -> Option<Vec<UnitId>> {
        let mut stack = vec![(start, vec![start])];
        let mut seen = vec![false; self.units.len()];
        while let Some((id, path)) = stack.pop() {
            for &d in &self.units[id].deps {
                if d == start {
                    let mut p = path.clone();
                    p.push(start);
                    return Some(p);
                }
                if !seen[d] {
                    seen[d] = true;
                    let mut p = path.clone();
                    p.push(d);
                    stack.push((d, p));
                }
            }
        }
        None
    }

    pub fn state(&self, id: UnitId) -> &UnitState {
        &self.units[id].state
    }

    pub fn info(&self, id: UnitId) -> UnitInfo<'_> {
        let u = &self.units[id];
        let health = u
            .spec
            .service
            .healthcheck
            .as_ref()
            .map(|_| match u.health.last_ok {
                None => "starting".to_string(),
                Some(true) => "healthy".to_string(),
                Some(false) => format!("unhealthy ({} failed)", u.health.failures),
            });
        UnitInfo {
            spec: &u.spec,
            state: &u.state,
            restarts: u.restarts,
            last_exit: u.last_exit,
            started_at: u.started_at,
            health,
            last_reason: u.last_reason.as_deref(),
        }
    }

    pub fn find(&self, name: &str) -> Option<UnitId> {
        self.ids(Kind::Service).find(|&i| self.units[i].spec.name == name)
    }

    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn shutting_down(&self) -> bool {
        matches!(
            self.phase,
            Phase::StoppingServices { .. } | Phase::Onshutdown(..) | Phase::Finished
        )
    }

    fn ids(&self, kind: Kind) -> impl Iterator<Item = UnitId> + '_ {
        (0..self.units.len()).filter(move |&i| self.units[i].spec.kind == kind)
    }

    fn log(&mut self, level: Level, msg: String) {
        self.out.push(Action::Log(level, msg));
    }

    fn label(&self, id: UnitId) -> String {
        let s = &self.units[id].spec;
        format!("{} {}", s.kind, s.name)
    }

    fn is_ready(&self, id: UnitId) -> bool {
        matches!(self.units[id].state, UnitState::Running { ready: true, .. })
    }

    /// A unit that will not become ready without someone starting it again.
    fn is_dead(&self, id: UnitId) -> bool {
        matches!(
            self.units[id].state,
            UnitState::Exited { .. } | UnitState::Failed { .. } | UnitState::Skipped
        )
    }

    fn is_busy(&self, id: UnitId) -> bool {
        matches!(
            self.units[id].state,
            UnitState::Starting | UnitState::Running { .. } | UnitState::Stopping { .. }
        )
    }

    /// Feed one event at time `now`; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: Time, event: Event) -> Vec<Action> {
        let valid = |id: UnitId| id < self.units.len();
        match event {
            Event::Boot if self.phase == Phase::NotBooted => {
                self.report_broken();
                self.next_onboot(now, None);
            }
            Event::Started(id) if valid(id) => self.started(now, id),
            Event::StartFailed(id, why) if valid(id) && self.units[id].state == UnitState::Starting => {
                let m = format!("{} failed to start: {why}", self.label(id));
                self.log(Level::Error, m);
                self.ended(now, id, None, Some(why));
            }
            Event::Ready(id) if valid(id) => {
                if let UnitState::Running { since, ready: false } = self.units[id].state {
                    self.units[id].state = UnitState::Running { since, ready: true };
                    let m = format!("service {} is ready", self.units[id].spec.name);
                    self.log(Level::Ok, m);
                }
            }
            Event::Exited(id, exit) if valid(id) => self.exited(now, id, exit),
            Event::Health(id, ok) if valid(id) => self.health_result(now, id, ok),
            Event::Watchdog(id) if valid(id) => self.watchdog_ping(now, id),
            Event::Shutdown(kind) => self.shutdown(now, kind),
            Event::UserStart(id) if valid(id) => self.user_start(now, id, false),
            Event::UserRestart(id) if valid(id) => self.user_start(now, id, true),
            Event::UserStop(id) if valid(id) => self.user_stop(now, id),
            _ => {}
        }
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// Time has passed: fire expired timeouts and restart delays.
    pub fn tick(&mut self, now: Time) -> Vec<Action> {
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let shutdown = match self.phase {
            Phase::StoppingServices { deadline, .. } => Some(deadline),
            _ => None,
        };
        (0..self.units.len())
            .filter_map(|id| self.deadline(id))
            .chain((0..self.units.len()).filter_map(|id| self.health_deadline(id)))
            .chain((0..self.units.len()).filter_map(|id| self.watchdog_deadline(id)))
            .chain(shutdown)
            .min()
    }

    fn health_deadline(&self, id: UnitId) -> Option<Time> {
        let u = &self.units[id];
        let check = u.spec.service.healthcheck.as_ref()?;
        if !matches!(u.state, UnitState::Running { .. }) || self.phase != Phase::Up {
            return None;
        }
        match u.health.running_since {
            Some(t) => Some(t + check.timeout),
            None => u.health.next,
        }
    }

    fn fire_health(&mut self, now: Time) {
        for id in 0..self.units.len() {
            match self.health_deadline(id) {
                Some(d) if d <= now => {}
                _ => continue,
            }
            let Some(check) = self.units[id].spec.service.healthcheck.clone() else {
                continue;
            };
            if self.units[id].health.running_since.is_some() {
                self.out.push(Action::KillHealthcheck(id));
                let m = format!(
                    "health check of {} timed out after {}",
                    self.label(id),
                    human(check.timeout)
                );
                self.log(Level::Warn, m);
                self.health_result(now, id, false);
            } else {
                self.units[id].health.running_since = Some(now);
                self.out.push(Action::RunHealthcheck(id));
            }
        }
    }

    fn health_result(&mut self, now: Time, id: UnitId, ok: bool) {
        let Some(check) = self.units[id].spec.service.healthcheck.clone() else {
            return;
        };
        let running = matches!(self.units[id].state, UnitState::Running { .. });
        let h = &mut self.units[id].health;
        if h.running_since.is_none() || !running {
            return; // a late report from a check already given up on, or from a past run
        }
        h.running_since = None;
        h.next = Some(now + check.interval);
        h.last_ok = Some(ok);
        if ok {
            h.failures = 0;
            if let UnitState::Running { since, ready: false } = self.units[id].state {
                if self.units[id].spec.service.readiness == Readiness::Healthcheck {
                    self.units[id].state = UnitState::Running { since, ready: true };
                    let m = format!(
                        "service {} is ready (health check passed)",
                        self.units[id].spec.name
                    );
                    self.log(Level::Ok, m);
                }
            }
            return;
        }
        h.failures += 1;
        let failures = h.failures;
        let label = self.label(id);
        self.log(
            Level::Warn,
            format!("health check of {label} failed ({failures}/{})", check.retries),
        );
        if failures >= check.retries {
            self.log(
                Level::Error,
                format!("{label} is unhealthy after {failures} failed checks; restarting it"),
            );
            self.signal_stop(now, id, StopWhy::Unhealthy);
        }
    }

    fn watchdog_deadline(&self, id: UnitId) -> Option<Time> {
        let u = &self.units[id];
        match u.state {
            UnitState::Running { .. } if self.phase == Phase::Up => u.watchdog_due,
            _ => None,
        }
    }

    fn watchdog_ping(&mut self, now: Time, id: UnitId) {
        let u = &mut self.units[id];
        if let (UnitState::Running { .. }, Some(t)) = (&u.state, u.spec.service.watchdog) {
            u.watchdog_due = Some(now + t);
        }
    }

    fn fire_watchdogs(&mut self, now: Time) {
        for id in 0..self.units.len() {
            match (self.watchdog_deadline(id), self.units[id].spec.service.watchdog) {
                (Some(d), Some(t)) if d <= now => {
                    self.units[id].watchdog_due = None;
                    let m = format!(
                        "{} missed its watchdog: no WATCHDOG=1 within {}; sending SIGABRT",
                        self.label(id),
                        human(t)
                    );
                    self.log(Level::Error, m);
                    self.units[id].state = UnitState::Stopping {
                        since: now,
                        killed: false,
                        why: StopWhy::Watchdog,
                    };
                    self.out.push(Action::Signal(id, StopSignal::Abort));
                }
                _ => {}
            }
        }
    }

    fn deadline(&self, id: UnitId) -> Option<Time> {
        let u = &self.units[id];
        match u.state {
            UnitState::Running { since, .. } if u.spec.kind != Kind::Service => Some(since + u.spec.timeout),
            UnitState::Running { since, ready: false } => Some(since + u.spec.service.start_timeout),
            UnitState::Stopping {
                since, killed: false, ..
            } => Some(since + u.spec.stop_timeout),
            UnitState::Stopping {
                since, killed: true, ..
            } => Some(since + KILL_GRACE),
            UnitState::Backoff { until } => Some(until),
            _ => None,
        }
    }

    /// Fire what is due, then start what can start, until nothing changes.
    fn settle(&mut self, now: Time) {
        self.fire_deadlines(now);
        if let Phase::StoppingServices { kind, deadline } = self.phase {
            if now >= deadline {
                self.shutdown_bound_reached(now);
            }
            self.stop_next(now);
            self.maybe_services_stopped(kind);
        }
        if self.phase == Phase::Up {
            self.fire_health(now);
            self.fire_watchdogs(now);
            self.schedule(now);
        }
    }

    fn fire_deadlines(&mut self, now: Time) {
        for id in 0..self.units.len() {
            match self.deadline(id) {
                Some(d) if d <= now => {}
                _ => continue,
            }
            match self.units[id].state.clone() {
                UnitState::Running { .. } if self.units[id].spec.kind != Kind::Service => {
                    let m = format!(
                        "{} timed out after {}; killing it",
                        self.label(id),
                        human(self.units[id].spec.timeout)
                    );
                    self.escalate(now, id, StopWhy::Timeout, Level::Error, m);
                }
                UnitState::Running { .. } => {
                    let m = format!(
                        "{} not ready within {}; stopping it",
                        self.label(id),
                        human(self.units[id].spec.service.start_timeout)
                    );
                    self.log(Level::Error, m);
                    self.signal_stop(now, id, StopWhy::Timeout);
                }
                UnitState::Stopping {
                    killed: false, why, ..
                } => {
                    let m = format!(
                        "{} did not stop within {}; sending SIGKILL",
                        self.label(id),
                        human(self.units[id].spec.stop_timeout)
                    );
                    self.escalate(now, id, why, Level::Warn, m);
                }
                UnitState::Stopping { killed: true, .. } => {
                    let reason = format!("still alive {} after SIGKILL; abandoned", human(KILL_GRACE));
                    let m = format!("{} {reason}", self.label(id));
                    self.log(Level::Error, m);
                    self.units[id].state = UnitState::Failed {
                        reason,
                        blocked_by: None,
                    };
                    self.out.push(Action::Abandon(id));
                    self.unit_done(now, id);
                }
                UnitState::Backoff { .. } if self.phase == Phase::Up => {
                    self.units[id].state = UnitState::Waiting;
                }
                _ => {}
            }
        }
    }

    fn escalate(&mut self, now: Time, id: UnitId, why: StopWhy, level: Level, msg: String) {
        self.log(level, msg);
        self.units[id].state = UnitState::Stopping {
            since: now,
            killed: true,
            why,
        };
        self.out.push(Action::Signal(id, StopSignal::Kill));
    }

    fn signal_stop(&mut self, now: Time, id: UnitId, why: StopWhy) {
        self.units[id].state = UnitState::Stopping {
            since: now,
            killed: false,
            why,
        };
        self.out.push(Action::Signal(id, StopSignal::Term));
    }

    fn start(&mut self, now: Time, id: UnitId) {
        let u = &mut self.units[id];
        u.state = UnitState::Starting;
        u.starts.push_back(now);
        self.out.push(Action::Start(id));
    }

    fn started(&mut self, now: Time, id: UnitId) {
        if self.units[id].state != UnitState::Starting {
            return;
        }
        let u = &mut self.units[id];
        let ready = u.spec.kind != Kind::Service || u.spec.service.readiness == Readiness::Started;
        u.state = UnitState::Running { since: now, ready };
        u.started_at = Some(now);
        u.health = Health {
            next: u.spec.service.healthcheck.as_ref().map(|c| now + c.interval),
            ..Health::default()
        };
        // The watchdog runs from the start, as WATCHDOG_USEC tells the service.
        u.watchdog_due = u
            .spec
            .service
            .watchdog
            .filter(|_| u.spec.kind == Kind::Service)
            .map(|t| now + t);
        if u.spec.kind == Kind::Service {
            let m = match &u.spec.service.readiness {
                Readiness::Started => format!("started service {}", u.spec.name),
                Readiness::Notify => format!("started service {} (waiting for READY=1)", u.spec.name),
                Readiness::File(f) => format!("started service {} (waiting for {f})", u.spec.name),
                Readiness::Healthcheck => {
                    format!("started service {} (waiting for its health check)", u.spec.name)
                }
            };
            self.log(Level::Ok, m);
        }
        // A shutdown may have arrived while this unit was being started.
        if matches!(self.phase, Phase::StoppingServices { .. })
            && self.units[id].spec.kind != Kind::Onshutdown
        {
            self.signal_stop(now, id, StopWhy::Shutdown);
        }
    }

    fn exited(&mut self, now: Time, id: UnitId, exit: Exit) {
        let why = match self.units[id].state {
            UnitState::Running { .. } => None,
            UnitState::Stopping { why, .. } => Some(why),
            // Not ours to track any more (abandoned, or a stray report).
            _ => return,
        };
        self.units[id].last_exit = Some(exit);
        let label = self.label(id);
        match self.units[id].spec.kind {
            Kind::Onboot | Kind::Onshutdown => {
                let timed_out = why == Some(StopWhy::Timeout);
                self.units[id].state = UnitState::Exited { exit, timed_out };
                match () {
                    _ if timed_out => self.log(Level::Error, format!("{label} failed: timed out ({exit})")),
                    _ if exit.success() => self.log(Level::Ok, format!("{label} finished: {exit}")),
                    _ => self.log(Level::Error, format!("{label} failed: {exit}")),
                }
                self.unit_done(now, id);
            }
            Kind::Service => match why {
                Some(StopWhy::Shutdown) => {
                    self.units[id].state = UnitState::Exited {
                        exit,
                        timed_out: false,
                    };
                    self.log(Level::Info, format!("stopped {label}: {exit}"));
                    self.unit_done(now, id);
                }
                Some(StopWhy::User) => {
                    self.units[id].state = UnitState::Stopped;
                    self.log(Level::Info, format!("stopped {label} on request: {exit}"));
                }
                Some(StopWhy::Restart) => {
                    self.log(Level::Info, format!("{label} stopped for restart: {exit}"));
                    self.units[id].restarts += 1;
                    self.units[id].state = UnitState::Waiting;
                }
                Some(StopWhy::Timeout) => self.ended(now, id, Some(exit), Some("not ready in time".into())),
                Some(StopWhy::Unhealthy) => self.ended(now, id, Some(exit), Some("unhealthy".into())),
                Some(StopWhy::Watchdog) => {
                    let t = self.units[id].spec.service.watchdog.unwrap_or_default();
                    let why = format!("watchdog timeout: no WATCHDOG=1 within {}", human(t));
                    self.ended(now, id, Some(exit), Some(why))
                }
                None => {
                    let level = if exit.success() { Level::Info } else { Level::Warn };
                    self.log(level, format!("{label} exited: {exit}"));
                    self.ended(now, id, Some(exit), None);
                }
            },
        }
    }

    /// A service run ended by itself (or never started): restart it, or give up.
    fn ended(&mut self, now: Time, id: UnitId, exit: Option<Exit>, failure: Option<String>) {
        if self.units[id].spec.kind != Kind::Service {
            let reason = failure.unwrap_or_else(|| "failed".into());
            self.units[id].state = UnitState::Failed {
                reason,
                blocked_by: None,
            };
            self.unit_done(now, id);
            return;
        }
        let failed = failure.is_some() || !exit.is_some_and(Exit::success);
        self.units[id].last_reason = failure.clone();
        let label = self.label(id);
        let policy = self.units[id].spec.service.clone();
        let stopping = matches!(self.phase, Phase::StoppingServices { .. });
        if stopping || !policy.restart.wants_restart(failed) {
            self.units[id].state = match exit {
                Some(exit) => UnitState::Exited {
                    exit,
                    timed_out: false,
                },
                None => UnitState::Failed {
                    reason: failure.unwrap_or_default(),
                    blocked_by: None,
                },
            };
            return;
        }
        if !policy.start_limit.allows(&mut self.units[id].starts, now) {
            let reason = format!(
                "start limit reached: {} starts within {}",
                policy.start_limit.burst,
                human(policy.start_limit.interval)
            );
            self.log(
                Level::Error,
                format!("{label} failed: {reason}; not restarting it"),
            );
            self.units[id].state = UnitState::Failed {
                reason,
                blocked_by: None,
            };
            return;
        }
        let u = &mut self.units[id];
        let ran = u.started_at.map(|t| now.saturating_sub(t)).unwrap_or_default();
        let delay = policy.backoff.delay(u.delay, ran);
        u.delay = policy.backoff.next(delay);
        u.restarts += 1;
        u.state = UnitState::Backoff { until: now + delay };
        self.log(Level::Info, format!("restarting {label} in {}", human(delay)));
    }

    /// Start every waiting service whose dependencies are ready; fail those whose
    /// dependencies never will be.
    fn schedule(&mut self, now: Time) {
        loop {
            let mut changed = false;
            for id in self.ids(Kind::Service).collect::<Vec<_>>() {
                if self.units[id].state != UnitState::Waiting {
                    continue;
                }
                let deps = self.units[id].deps.clone();
                if let Some(&dead) = deps.iter().find(|&&d| self.is_dead(d)) {
                    let reason = format!(
                        "dependency {} is {}",
                        self.units[dead].spec.name,
                        self.units[dead].state.word()
                    );
                    let m = format!("{} not started: {reason}", self.label(id));
                    self.log(Level::Error, m);
                    self.units[id].state = UnitState::Failed {
                        reason,
                        blocked_by: Some(dead),
                    };
                    changed = true;
                } else if deps.iter().all(|&d| self.is_ready(d)) {
                    self.start(now, id);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn user_start(&mut self, now: Time, id: UnitId, restart: bool) {
        let label = self.label(id);
        if self.units[id].spec.kind != Kind::Service || self.phase != Phase::Up {
            self.log(
                Level::Warn,
                format!("{label}: start/restart refused (not a service, or not up)"),
            );
            return;
        }
        match self.units[id].state {
            UnitState::Running { .. } if restart => {
                self.log(Level::Info, format!("restarting {label} on request"));
                self.signal_stop(now, id, StopWhy::Restart);
                return;
            }
            UnitState::Running { .. } | UnitState::Starting | UnitState::Stopping { .. } => {
                self.log(
                    Level::Info,
                    format!("{label} is already {}", self.units[id].state.word()),
                );
                return;
            }
            _ => {}
        }
        // A fresh start: forget past failures, and wake what waited on this unit.
        let u = &mut self.units[id];
        u.starts.clear();
        u.delay = Duration::ZERO;
        u.state = UnitState::Waiting;
        self.unblock_dependents(id);
        self.log(Level::Info, format!("starting {label} on request"));
    }

    fn unblock_dependents(&mut self, id: UnitId) {
        for d in 0..self.units.len() {
            if let UnitState::Failed {
                blocked_by: Some(b), ..
            } = self.units[d].state
            {
                if b == id {
                    self.units[d].state = UnitState::Waiting;
                    self.unblock_dependents(d);
                }
            }
        }
    }

    fn user_stop(&mut self, now: Time, id: UnitId) {
        let label = self.label(id);
        if self.units[id].spec.kind != Kind::Service || self.shutting_down() {
            self.log(
                Level::Warn,
                format!("{label}: stop refused (not a service, or shutting down)"),
            );
            return;
        }
        match self.units[id].state {
            UnitState::Running { .. } => {
                self.log(Level::Info, format!("stopping {label} on request"));
                self.signal_stop(now, id, StopWhy::User);
            }
            UnitState::Stopping { killed, since, .. } => {
                self.units[id].state = UnitState::Stopping {
                    since,
                    killed,
                    why: StopWhy::User,
                };
            }
            UnitState::Waiting
            | UnitState::Backoff { .. }
            | UnitState::Failed { .. }
            | UnitState::Exited { .. } => {
                self.units[id].state = UnitState::Stopped;
                self.log(Level::Info, format!("stopped {label} on request"));
            }
            _ => {}
        }
    }

    /// A unit reached a final state: advance whatever phase was waiting on it.
    fn unit_done(&mut self, now: Time, id: UnitId) {
        match self.phase {
            Phase::Onboot(cur) if cur == id => {
                let ok = matches!(self.units[id].state, UnitState::Exited { exit, timed_out: false } if exit.success());
                let stop = match self.policy {
                    _ if ok => None,
                    OnbootFailure::Continue => None,
                    OnbootFailure::Poweroff => Some(ShutdownKind::Poweroff),
                    OnbootFailure::Reboot => Some(ShutdownKind::Reboot),
                    OnbootFailure::Halt => Some(ShutdownKind::Halt),
                };
                match stop {
                    Some(kind) => {
                        let m = format!(
                            "boot stopped: {} failed and keel.onboot_failure={kind}; no services will start",
                            self.label(id)
                        );
                        self.log(Level::Error, m);
                        self.skip_waiting(Kind::Onboot);
                        self.begin_stop(now, kind);
                    }
                    None => self.next_onboot(now, Some(id)),
                }
            }
            Phase::Onshutdown(cur, kind) if cur == id => self.next_onshutdown(now, Some(id), kind),
            _ => {}
        }
    }

    fn skip_waiting(&mut self, kind: Kind) {
        for id in self.ids(kind).collect::<Vec<_>>() {
            if matches!(
                self.units[id].state,
                UnitState::Waiting | UnitState::Backoff { .. }
            ) {
                self.units[id].state = UnitState::Skipped;
            }
        }
    }

    /// Say once, at boot, which services cannot run because of their configuration.
    fn report_broken(&mut self) {
        for id in self.ids(Kind::Service).collect::<Vec<_>>() {
            if let UnitState::Failed { reason, .. } = &self.units[id].state {
                let m = format!("{} cannot start: {reason}", self.label(id));
                self.log(Level::Error, m);
            }
        }
    }

    fn next_onboot(&mut self, now: Time, after: Option<UnitId>) {
        let next = self.ids(Kind::Onboot).find(|&i| after.is_none_or(|a| i > a));
        match next {
            Some(id) => {
                self.phase = Phase::Onboot(id);
                self.start(now, id);
            }
            None => {
                self.phase = Phase::Up;
                if self.ids(Kind::Service).next().is_none() {
                    self.log(Level::Info, "boot complete; no services".into());
                }
            }
        }
    }

    fn shutdown(&mut self, now: Time, kind: ShutdownKind) {
        match self.phase {
            Phase::NotBooted | Phase::Up => {
                self.log(Level::Info, format!("{kind} requested; stopping services"));
                self.begin_stop(now, kind);
            }
            Phase::Onboot(_) => {
                self.log(
                    Level::Info,
                    format!("{kind} requested during onboot; stopping the boot"),
                );
                self.skip_waiting(Kind::Onboot);
                self.begin_stop(now, kind);
            }
            _ => self.log(Level::Info, format!("{kind} requested; already shutting down")),
        }
    }

    fn begin_stop(&mut self, now: Time, kind: ShutdownKind) {
        self.phase = Phase::StoppingServices {
            kind,
            deadline: now + SHUTDOWN_BOUND,
        };
        self.skip_waiting(Kind::Service);
        for id in self.ids(Kind::Service).collect::<Vec<_>>() {
            if self.units[id].state == UnitState::Stopped {
                self.units[id].state = UnitState::Skipped;
            }
        }
        // A running onboot container stops at once.
        for id in self.ids(Kind::Onboot).collect::<Vec<_>>() {
            if let UnitState::Running { .. } = self.units[id].state {
                self.signal_stop(now, id, StopWhy::Shutdown);
            }
        }
    }

    /// Stop, in parallel, every running service that no running service depends on:
    /// dependents stop before what they depend on.
    fn stop_next(&mut self, now: Time) {
        for id in self.ids(Kind::Service).collect::<Vec<_>>() {
            match self.units[id].state {
                UnitState::Running { .. } => {}
                UnitState::Stopping { why, since, killed } if why != StopWhy::Shutdown => {
                    // Already stopping for another reason: now it is for good.
                    self.units[id].state = UnitState::Stopping {
                        since,
                        killed,
                        why: StopWhy::Shutdown,
                    };
                    continue;
                }
                _ => continue,
            }
            let needed = (0..self.units.len()).any(|d| self.units[d].deps.contains(&id) && self.is_busy(d));
            if !needed {
                self.signal_stop(now, id, StopWhy::Shutdown);
            }
        }
    }

    fn shutdown_bound_reached(&mut self, now: Time) {
        let mut late = Vec::new();
        for id in 0..self.units.len() {
            if self.units[id].spec.kind == Kind::Onshutdown {
                continue;
            }
            match self.units[id].state {
                UnitState::Running { .. } | UnitState::Stopping { killed: false, .. } => {
                    self.units[id].state = UnitState::Stopping {
                        since: now,
                        killed: true,
                        why: StopWhy::Shutdown,
                    };
                    self.out.push(Action::Signal(id, StopSignal::Kill));
                    late.push(self.units[id].spec.name.clone());
                }
                _ => {}
            }
        }
        if !late.is_empty() {
            let m = format!(
                "shutdown bound of {} reached; killing {}",
                human(SHUTDOWN_BOUND),
                late.join(", ")
            );
            self.log(Level::Warn, m);
        }
    }

    fn maybe_services_stopped(&mut self, kind: ShutdownKind) {
        let busy =
            (0..self.units.len()).any(|id| self.units[id].spec.kind != Kind::Onshutdown && self.is_busy(id));
        if !busy {
            self.next_onshutdown(Duration::ZERO, None, kind);
        }
    }

    fn next_onshutdown(&mut self, now: Time, after: Option<UnitId>, kind: ShutdownKind) {
        let next = self.ids(Kind::Onshutdown).find(|&i| after.is_none_or(|a| i > a));
        match next {
            Some(id) => {
                self.phase = Phase::Onshutdown(id, kind);
                self.start(now, id);
            }
            None => {
                self.phase = Phase::Finished;
                self.out.push(Action::Finish(kind));
            }
        }
    }
}

#[cfg(test)]
mod tests;
