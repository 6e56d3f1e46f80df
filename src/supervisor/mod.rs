//! The boot and supervision state machine. Sans-IO: the driver feeds it events and the
//! current time, it answers with actions. No syscalls here, so every ordering, timeout and
//! policy is tested with a fake clock.
//!
//! Phases: onboot containers run one at a time, in order, each to completion (bounded by its
//! timeout); then all services start; a shutdown request stops the services (SIGTERM, then
//! SIGKILL after their stop timeout), runs the onshutdown containers in order, and ends with
//! `Action::Finish`.

use std::fmt;
use std::time::Duration;

use crate::duration::human;
use crate::init::cmdline::OnbootFailure;

/// Time since an arbitrary epoch, supplied by the driver (monotonic clock) or a test.
pub type Time = Duration;

/// After SIGKILL, how long to wait for the exit before giving up on a container.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

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
    Term,
    Kill,
}

pub type UnitId = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitState {
    Waiting,
    Running {
        since: Time,
    },
    /// A stop signal was sent at `since`; `killed` once SIGKILL went out.
    Stopping {
        since: Time,
        killed: bool,
        timed_out: bool,
    },
    Exited {
        exit: Exit,
        timed_out: bool,
    },
    /// Could not be started, or never died after SIGKILL.
    Failed {
        reason: String,
    },
    /// Never run: the boot was stopped or the machine shut down first.
    Skipped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The base system is up: begin with the onboot containers.
    Boot,
    /// The runtime created and started the unit's container.
    Started(UnitId),
    /// The runtime could not create or start it; the text names the cause.
    StartFailed(UnitId, String),
    /// The unit's container process was reaped.
    Exited(UnitId, Exit),
    /// poweroff / reboot / halt was requested.
    Shutdown(ShutdownKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(UnitId),
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
    StoppingServices(ShutdownKind),
    Onshutdown(UnitId, ShutdownKind),
    Finished,
}

struct Unit {
    spec: UnitSpec,
    state: UnitState,
}

pub struct Machine {
    units: Vec<Unit>,
    phase: Phase,
    policy: OnbootFailure,
    out: Vec<Action>,
}

impl Machine {
    /// `units` in boot order: onboot containers in the order they must run, the services,
    /// then onshutdown containers in order.
    pub fn new(units: Vec<UnitSpec>, policy: OnbootFailure) -> Self {
        Machine {
            units: units
                .into_iter()
                .map(|spec| Unit {
                    spec,
                    state: UnitState::Waiting,
                })
                .collect(),
            phase: Phase::NotBooted,
            policy,
            out: Vec::new(),
        }
    }

    pub fn spec(&self, id: UnitId) -> &UnitSpec {
        &self.units[id].spec
    }

    pub fn state(&self, id: UnitId) -> &UnitState {
        &self.units[id].state
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    pub fn shutting_down(&self) -> bool {
        matches!(
            self.phase,
            Phase::StoppingServices(_) | Phase::Onshutdown(..) | Phase::Finished
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

    /// Feed one event at time `now`; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: Time, event: Event) -> Vec<Action> {
        match event {
            Event::Boot => {
                if self.phase == Phase::NotBooted {
                    self.next_onboot(None);
                }
            }
            Event::Started(id) => {
                if id < self.units.len() && self.units[id].state == UnitState::Waiting {
                    self.units[id].state = UnitState::Running { since: now };
                    if self.units[id].spec.kind == Kind::Service {
                        let m = format!("started service {}", self.units[id].spec.name);
                        self.log(Level::Info, m);
                    }
                    // A shutdown may have arrived while this unit was being started.
                    if let Phase::StoppingServices(_) = self.phase {
                        self.stop_unit(now, id);
                    }
                }
            }
            Event::StartFailed(id, why) => {
                if id < self.units.len() {
                    let m = format!("{} failed to start: {why}", self.label(id));
                    self.log(Level::Error, m);
                    self.units[id].state = UnitState::Failed { reason: why };
                    self.unit_done(now, id);
                }
            }
            Event::Exited(id, exit) => {
                if id < self.units.len() {
                    self.exited(now, id, exit);
                }
            }
            Event::Shutdown(kind) => self.shutdown(now, kind),
        }
        self.tick_inner(now);
        std::mem::take(&mut self.out)
    }

    /// Time has passed: fire expired timeouts.
    pub fn tick(&mut self, now: Time) -> Vec<Action> {
        self.tick_inner(now);
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        (0..self.units.len()).filter_map(|id| self.deadline(id)).min()
    }

    fn deadline(&self, id: UnitId) -> Option<Time> {
        let u = &self.units[id];
        match u.state {
            UnitState::Running { since } if u.spec.kind != Kind::Service => Some(since + u.spec.timeout),
            UnitState::Stopping {
                since, killed: false, ..
            } => Some(since + u.spec.stop_timeout),
            UnitState::Stopping {
                since, killed: true, ..
            } => Some(since + KILL_GRACE),
            _ => None,
        }
    }

    fn tick_inner(&mut self, now: Time) {
        for id in 0..self.units.len() {
            match self.deadline(id) {
                Some(d) if d <= now => {}
                _ => continue,
            }
            match self.units[id].state.clone() {
                UnitState::Running { .. } => {
                    let m = format!(
                        "{} timed out after {}; killing it",
                        self.label(id),
                        human(self.units[id].spec.timeout)
                    );
                    self.escalate(now, id, true, Level::Error, m);
                }
                UnitState::Stopping {
                    killed: false,
                    timed_out,
                    ..
                } => {
                    let m = format!(
                        "{} did not stop within {}; sending SIGKILL",
                        self.label(id),
                        human(self.units[id].spec.stop_timeout)
                    );
                    self.escalate(now, id, timed_out, Level::Warn, m);
                }
                UnitState::Stopping { killed: true, .. } => {
                    let reason = format!("still alive {} after SIGKILL; abandoned", human(KILL_GRACE));
                    let m = format!("{} {reason}", self.label(id));
                    self.log(Level::Error, m);
                    self.units[id].state = UnitState::Failed { reason };
                    self.out.push(Action::Abandon(id));
                    self.unit_done(now, id);
                }
                _ => {}
            }
        }
    }

    fn escalate(&mut self, now: Time, id: UnitId, timed_out: bool, level: Level, why: String) {
        self.log(level, why);
        self.units[id].state = UnitState::Stopping {
            since: now,
            killed: true,
            timed_out,
        };
        self.out.push(Action::Signal(id, StopSignal::Kill));
    }

    fn exited(&mut self, now: Time, id: UnitId, exit: Exit) {
        let timed_out = match self.units[id].state {
            UnitState::Running { .. } => false,
            UnitState::Stopping { timed_out, .. } => timed_out,
            // Not ours to track any more (abandoned, or a stray report).
            _ => return,
        };
        let stopping = matches!(self.units[id].state, UnitState::Stopping { .. });
        self.units[id].state = UnitState::Exited { exit, timed_out };
        let label = self.label(id);
        let kind = self.units[id].spec.kind;
        match kind {
            Kind::Onboot | Kind::Onshutdown if timed_out => {
                self.log(Level::Error, format!("{label} failed: timed out ({exit})"))
            }
            Kind::Onboot | Kind::Onshutdown if exit.success() => {
                self.log(Level::Info, format!("{label} finished: {exit}"))
            }
            Kind::Onboot | Kind::Onshutdown => self.log(Level::Error, format!("{label} failed: {exit}")),
            Kind::Service if stopping => self.log(Level::Info, format!("stopped {label}: {exit}")),
            Kind::Service => self.log(Level::Warn, format!("{label} exited: {exit}")),
        }
        self.unit_done(now, id);
    }

    /// A unit reached a final state: advance whatever phase was waiting on it.
    fn unit_done(&mut self, now: Time, id: UnitId) {
        match self.phase {
            Phase::Onboot(cur) if cur == id => {
                let failed = !matches!(self.units[id].state, UnitState::Exited { exit, timed_out: false } if exit.success());
                let stop = match self.policy {
                    _ if !failed => None,
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
                        self.skip_waiting(Kind::Service);
                        self.begin_stop(now, kind);
                    }
                    None => self.next_onboot(Some(id)),
                }
            }
            Phase::StoppingServices(kind) => self.maybe_services_stopped(kind),
            Phase::Onshutdown(cur, kind) if cur == id => self.next_onshutdown(Some(id), kind),
            _ => {}
        }
    }

    fn skip_waiting(&mut self, kind: Kind) {
        for id in self.ids(kind).collect::<Vec<_>>() {
            if self.units[id].state == UnitState::Waiting {
                self.units[id].state = UnitState::Skipped;
            }
        }
    }

    fn next_onboot(&mut self, after: Option<UnitId>) {
        let next = self.ids(Kind::Onboot).find(|&i| after.is_none_or(|a| i > a));
        match next {
            Some(id) => {
                self.phase = Phase::Onboot(id);
                self.out.push(Action::Start(id));
            }
            None => {
                self.phase = Phase::Up;
                let services: Vec<_> = self.ids(Kind::Service).collect();
                if services.is_empty() {
                    self.log(Level::Info, "boot complete; no services".into());
                }
                for id in services {
                    self.out.push(Action::Start(id));
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
                // The running onboot container is stopped like a service.
                self.begin_stop(now, kind);
            }
            _ => self.log(Level::Info, format!("{kind} requested; already shutting down")),
        }
    }

    /// Stop every running service (and a running onboot container) in parallel.
    fn begin_stop(&mut self, now: Time, kind: ShutdownKind) {
        self.phase = Phase::StoppingServices(kind);
        self.skip_waiting(Kind::Service);
        for id in 0..self.units.len() {
            if self.units[id].spec.kind != Kind::Onshutdown {
                self.stop_unit(now, id);
            }
        }
        self.maybe_services_stopped(kind);
    }

    fn stop_unit(&mut self, now: Time, id: UnitId) {
        if let UnitState::Running { .. } = self.units[id].state {
            self.units[id].state = UnitState::Stopping {
                since: now,
                killed: false,
                timed_out: false,
            };
            self.out.push(Action::Signal(id, StopSignal::Term));
        }
    }

    fn maybe_services_stopped(&mut self, kind: ShutdownKind) {
        let busy = self.units.iter().any(|u| {
            u.spec.kind != Kind::Onshutdown
                && matches!(u.state, UnitState::Running { .. } | UnitState::Stopping { .. })
        });
        // A unit being started right now is Waiting but will report Started/StartFailed; those
        // are only ever pending within one driver step, so "busy" needs only the states above.
        if !busy {
            self.next_onshutdown(None, kind);
        }
    }

    fn next_onshutdown(&mut self, after: Option<UnitId>, kind: ShutdownKind) {
        let next = self.ids(Kind::Onshutdown).find(|&i| after.is_none_or(|a| i > a));
        match next {
            Some(id) => {
                self.phase = Phase::Onshutdown(id, kind);
                self.out.push(Action::Start(id));
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
