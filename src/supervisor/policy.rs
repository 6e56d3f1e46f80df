//! Per-service supervision settings and the pure rules that apply them.

use std::collections::VecDeque;
use std::time::Duration;

use super::Time;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

/// When a service counts as ready, for the services that depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as its process runs.
    Started,
    /// When it sends `READY=1` on the sd_notify socket.
    Notify,
    /// When this path exists inside the container.
    File(String),
    /// When its health check first passes.
    Healthcheck,
}

/// A command run inside the service's container every `interval`; `retries` consecutive
/// failures (non-zero exit, or longer than `timeout`) restart the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

impl Healthcheck {
    pub fn new(command: Vec<String>) -> Self {
        Healthcheck {
            command,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }
}

/// Exponential backoff between restarts: `initial`, times `factor` after each restart, at
/// most `max`; back to `initial` once a run lasted `reset_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: u32,
    pub max: Duration,
    pub reset_after: Duration,
}

/// At most `burst` starts within `interval`; one more and the service is failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartLimit {
    pub burst: u32,
    pub interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePolicy {
    pub restart: Restart,
    pub backoff: Backoff,
    pub start_limit: StartLimit,
    pub depends_on: Vec<String>,
    pub readiness: Readiness,
    /// Not ready within this long after starting: stopped and counted as a failure.
    pub start_timeout: Duration,
    pub healthcheck: Option<Healthcheck>,
    /// sd_notify watchdog: a run with no `WATCHDOG=1` for this long is stopped (SIGABRT,
    /// then SIGKILL) and counts as a failure.
    pub watchdog: Option<Duration>,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            restart: Restart::Always,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                factor: 2,
                max: Duration::from_secs(30),
                reset_after: Duration::from_secs(10),
            },
            start_limit: StartLimit {
                burst: 10,
                interval: Duration::from_secs(60),
            },
            depends_on: Vec::new(),
            readiness: Readiness::Started,
            start_timeout: Duration::from_secs(60),
            healthcheck: None,
            watchdog: None,
        }
    }
}

impl Restart {
    pub fn wants_restart(self, failed: bool) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => failed,
            Restart::Never => false,
        }
    }
}

impl Backoff {
    /// The delay before the next restart, given the current one and how long the service ran.
    pub fn delay(&self, current: Duration, ran: Duration) -> Duration {
        if ran >= self.reset_after || current.is_zero() {
            self.initial
        } else {
            current
        }
    }

    pub fn next(&self, delay: Duration) -> Duration {
        delay.saturating_mul(self.factor.max(1)).min(self.max)
    }
}

impl StartLimit {
    /// Forget starts older than the interval; true if another start is still allowed.
    pub fn allows(&self, starts: &mut VecDeque<Time>, now: Time) -> bool {
        while starts
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= self.interval)
        {
            starts.pop_front();
        }
        // Only the last `burst` starts matter: the deque never grows beyond that.
        while starts.len() > self.burst as usize {
            starts.pop_front();
        }
        (starts.len() as u32) < self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn restart_policies() {
        assert!(Restart::Always.wants_restart(false) && Restart::Always.wants_restart(true));
        assert!(!Restart::OnFailure.wants_restart(false) && Restart::OnFailure.wants_restart(true));
        assert!(!Restart::Never.wants_restart(true));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_good_run() {
        let b = ServicePolicy::default().backoff;
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            d = b.delay(d, ms(5));
            seen.push(d);
            d = b.next(d);
        }
        let want: Vec<_> = [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(seen, want);
        assert_eq!(
            b.delay(ms(30000), Duration::from_secs(10)),
            ms(100),
            "reset after 10s up"
        );
    }

    #[test]
    fn start_limit_counts_starts_within_the_interval() {
        let l = StartLimit {
            burst: 3,
            interval: Duration::from_secs(10),
        };
        let mut starts = VecDeque::new();
        for t in [0, 1, 2] {
            assert!(l.allows(&mut starts, Duration::from_secs(t)));
            starts.push_back(Duration::from_secs(t));
        }
        assert!(!l.allows(&mut starts, Duration::from_secs(3)));
        // Ten seconds after the first start it has left the window.
        assert!(l.allows(&mut starts, Duration::from_secs(10)));
        assert_eq!(starts.len(), 2);
    }
}
