//! Injected faults, for the fault suite. Built only with the `faults` feature (never in the
//! device or release builds: without it every check below is a constant `false` and
//! `keel.fault` is an unknown option). `keel.fault=STEP[:WHAT],...` on the kernel command
//! line makes those internal steps fail as if the kernel had refused them (EIO), so the
//! real error paths run:
//!
//! * `mount[:/TARGET]`: mounting a base filesystem (all but /proc, which is mounted before
//!   the command line can be read);
//! * `cgroup`: creating the cgroup all containers live under;
//! * `create[:NAME]`, `start[:NAME]`: creating a container, or starting one just created
//!   (NAME is the bundle's directory name, or its id such as `services.web`);
//! * `loop`: setting up the event loop.

#[cfg(feature = "faults")]
mod imp {
    use std::sync::OnceLock;

    static FAULTS: OnceLock<Vec<(String, Option<String>)>> = OnceLock::new();

    fn parse(cmdline: &str) -> Vec<(String, Option<String>)> {
        cmdline
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("keel.fault="))
            .flat_map(|v| v.split(','))
            .filter(|f| !f.is_empty())
            .map(|f| match f.split_once(':') {
                Some((step, what)) => (step.to_string(), Some(what.to_string())),
                None => (f.to_string(), None),
            })
            .collect()
    }

    /// The faults to inject, from a command line given by the caller (development mode).
    pub fn set(cmdline: &str) {
        let _ = FAULTS.set(parse(cmdline));
    }

    /// Should `step` on `what` fail? Says so on the console when it does.
    pub fn injected(step: &str, what: &str) -> bool {
        if FAULTS.get().is_none() {
            // On a machine: from /proc/cmdline, as soon as /proc is mounted.
            if let Ok(c) = std::fs::read_to_string("/proc/cmdline") {
                set(&c);
            }
        }
        let dir = what.split_once('.').map_or(what, |(_, d)| d);
        let hit = FAULTS.get().is_some_and(|f| {
            f.iter()
                .any(|(s, w)| s == step && w.as_deref().is_none_or(|w| w == what || w == dir))
        });
        if hit {
            log::warn!("injected fault: {step} {what} fails");
        }
        hit
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn steps_and_targets() {
            let f = super::parse("quiet keel.fault=mount:/tmp,cgroup keel.fault=create:web");
            assert_eq!(
                f,
                [
                    ("mount".into(), Some("/tmp".into())),
                    ("cgroup".into(), None),
                    ("create".into(), Some("web".into()))
                ]
            );
        }
    }
}

#[cfg(not(feature = "faults"))]
mod imp {
    pub fn set(_: &str) {}

    #[inline(always)]
    pub fn injected(_: &str, _: &str) -> bool {
        false
    }
}

pub use imp::{injected, set};

/// The error an injected fault stands for.
pub const ERRNO: nix::errno::Errno = nix::errno::Errno::EIO;
