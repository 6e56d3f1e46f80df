//! What PID 1 parses at boot from outside the binary: the kernel command line, durations,
//! and a bundle's config.json with its `org.keel.*` annotations. None may panic; the values
//! they yield must be usable as deadlines (now + value) for a machine up for a century.
#![no_main]

use std::path::Path;
use std::time::Duration;

use keel::init::cmdline;
use keel::init::containers::{display_name, settings_from};
use keel::supervisor::{Kind, UnitSpec};
use libfuzzer_sys::fuzz_target;

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn deadline_ok(d: Duration) {
    assert!(CENTURY.checked_add(d).is_some(), "{d:?}");
}

fn check_spec(s: &UnitSpec) {
    for d in [s.timeout, s.stop_timeout, s.service.start_timeout] {
        deadline_ok(d);
    }
    let b = &s.service.backoff;
    for d in [b.initial, b.max, b.reset_after, s.service.start_limit.interval] {
        deadline_ok(d);
    }
    assert!(b.factor >= 1 && s.service.start_limit.burst >= 1);
    if let Some(h) = &s.service.healthcheck {
        assert!(!h.command.is_empty() && h.retries >= 1);
        deadline_ok(h.interval);
        deadline_ok(h.timeout);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 4 {
        0 => {
            let o = cmdline::parse(&text);
            for d in [o.onboot_timeout, o.onshutdown_timeout, o.stop_timeout] {
                deadline_ok(d);
            }
            if let Some(w) = o.watchdog {
                assert!(w >= Duration::from_secs(2));
                deadline_ok(w);
            }
        }
        1 => {
            if let Ok(d) = keel::duration::parse(&text) {
                deadline_ok(d);
                // What human() prints is shown to people; it must not panic either.
                let _ = keel::duration::human(d);
            }
        }
        _ => {
            // A bundle's config.json, as raw bytes (it need not be UTF-8).
            let kind = [Kind::Onboot, Kind::Service, Kind::Onshutdown][usize::from(which / 4 % 3)];
            let name = display_name("000-fuzz");
            let opts = cmdline::Options::default();
            let mut warnings = Vec::new();
            let spec = settings_from(
                Path::new("config.json"),
                Some(rest),
                name,
                kind,
                &opts,
                &mut warnings,
            );
            check_spec(&spec);
            let _ = display_name(&text);
        }
    }
});
