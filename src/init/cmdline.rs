//! keel's options on the kernel command line. Everything is optional; unknown `keel.*`
//! options and bad values become warnings, never a failed boot.

use std::time::Duration;

use crate::duration;
use crate::logging::syslog;

/// What to do when an onboot container fails (non-zero exit, timeout, or cannot start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnbootFailure {
    /// Report it and go on with the boot.
    Continue,
    /// Stop the boot: start no services, run onshutdown, then power off / reboot / halt.
    Poweroff,
    Reboot,
    Halt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `keel.debug`: log debug detail.
    pub debug: bool,
    /// `quiet` or `keel.quiet`: only warnings and errors on the console.
    pub quiet: bool,
    /// `keel.onboot_failure=continue|poweroff|reboot|halt`.
    pub onboot_failure: OnbootFailure,
    /// `keel.onboot_timeout=DURATION`: default run limit for each onboot container.
    pub onboot_timeout: Duration,
    /// `keel.onshutdown_timeout=DURATION`: default run limit for each onshutdown container.
    pub onshutdown_timeout: Duration,
    /// `keel.stop_timeout=DURATION`: default SIGTERM-to-SIGKILL grace for services.
    pub stop_timeout: Duration,
    /// `keel.watchdog=DURATION`: arm /dev/watchdog with this timeout and pet it.
    pub watchdog: Option<Duration>,
    /// `keel.syslog=udp://IP:PORT|tcp://IP:PORT|unix:/PATH`, with `keel.syslog_facility=`
    /// and `keel.syslog_format=`: forward every log line there.
    pub syslog: Option<syslog::Config>,
    /// Problems found while parsing, reported once logging is up.
    pub warnings: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debug: false,
            quiet: false,
            onboot_failure: OnbootFailure::Continue,
            onboot_timeout: Duration::from_secs(120),
            onshutdown_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            watchdog: None,
            syslog: None,
            warnings: Vec::new(),
        }
    }
}

/// Split a command line into words, honouring double quotes the way the kernel does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

pub fn parse(cmdline: &str) -> Options {
    let mut o = Options::default();
    let (mut facility, mut format) = (None, None);
    for word in words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        let flag = |o: &mut Options| match value {
            None | Some("1") | Some("yes") | Some("true") | Some("on") => true,
            Some("0") | Some("no") | Some("false") | Some("off") => false,
            Some(v) => {
                o.warnings
                    .push(format!("kernel option {key}={v}: expected a boolean; ignored"));
                false
            }
        };
        let dur = |o: &mut Options, slot: fn(&mut Options) -> &mut Duration| match value {
            Some(v) => match duration::parse(v) {
                Ok(d) => *slot(o) = d,
                Err(e) => o
                    .warnings
                    .push(format!("kernel option {key}: {e}; keeping the default")),
            },
            None => o
                .warnings
                .push(format!("kernel option {key} needs a value; keeping the default")),
        };
        match key {
            "quiet" | "keel.quiet" => o.quiet = flag(&mut o),
            "keel.debug" => o.debug = flag(&mut o),
            "keel.onboot_failure" => match value {
                Some("continue") => o.onboot_failure = OnbootFailure::Continue,
                Some("poweroff") => o.onboot_failure = OnbootFailure::Poweroff,
                Some("reboot") => o.onboot_failure = OnbootFailure::Reboot,
                Some("halt") => o.onboot_failure = OnbootFailure::Halt,
                other => o.warnings.push(format!(
                    "kernel option keel.onboot_failure={}: expected continue, poweroff, reboot or halt; keeping continue",
                    other.unwrap_or("")
                )),
            },
            "keel.onboot_timeout" => dur(&mut o, |o| &mut o.onboot_timeout),
            "keel.onshutdown_timeout" => dur(&mut o, |o| &mut o.onshutdown_timeout),
            "keel.stop_timeout" => dur(&mut o, |o| &mut o.stop_timeout),
            "keel.watchdog" => match value.map(duration::parse) {
                Some(Ok(d)) if d >= Duration::from_secs(2) => o.watchdog = Some(d),
                _ => o.warnings.push(format!(
                    "kernel option {word}: expected a duration of at least 2s; no watchdog"
                )),
            },
            "keel.syslog" => match value.unwrap_or("").parse() {
                Ok(d) => o.syslog = Some(syslog::Config::new(d)),
                Err(e) => o.warnings.push(format!("kernel option {word}: {e}; no syslog forwarding")),
            },
            "keel.syslog_facility" => match value.unwrap_or("").parse() {
                Ok(f) => facility = Some(f),
                Err(e) => o.warnings.push(format!("kernel option {word}: {e}; using daemon")),
            },
            "keel.syslog_format" => match value.unwrap_or("").parse() {
                Ok(f) => format = Some(f),
                Err(e) => o.warnings.push(format!("kernel option {word}: {e}; using the default")),
            },
            #[cfg(feature = "faults")]
            "keel.fault" => {}
            k if k.starts_with("keel.") => o.warnings.push(format!("unknown kernel option {word}; ignored")),
            _ => {}
        }
    }
    match o.syslog.as_mut() {
        Some(c) => {
            c.facility = facility.unwrap_or(c.facility);
            c.format = format;
        }
        None if facility.is_some() || format.is_some() => o
            .warnings
            .push("keel.syslog_facility and keel.syslog_format need keel.syslog; ignored".into()),
        None => {}
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_given() {
        let o = parse("console=ttyS0 root=/dev/vda panic=-1");
        assert_eq!(o, Options::default());
    }

    #[test]
    fn reads_every_option() {
        let o = parse(
            "console=ttyS0 keel.debug quiet keel.onboot_failure=poweroff keel.onboot_timeout=5s \
             keel.onshutdown_timeout=250ms keel.stop_timeout=2m keel.watchdog=30s",
        );
        assert!(o.debug && o.quiet);
        assert_eq!(o.onboot_failure, OnbootFailure::Poweroff);
        assert_eq!(o.onboot_timeout, Duration::from_secs(5));
        assert_eq!(o.onshutdown_timeout, Duration::from_millis(250));
        assert_eq!(o.stop_timeout, Duration::from_secs(120));
        assert_eq!(o.watchdog, Some(Duration::from_secs(30)));
        assert!(parse("keel.watchdog=1s").watchdog.is_none());
        assert_eq!(parse("keel.watchdog=1s").warnings.len(), 1);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let o = parse("keel.onboot_failure=explode keel.stop_timeout=soon keel.frobnicate=1 keel.debug=maybe keel.onboot_timeout");
        assert_eq!(o.onboot_failure, OnbootFailure::Continue);
        assert_eq!(o.stop_timeout, Options::default().stop_timeout);
        assert_eq!(o.onboot_timeout, Options::default().onboot_timeout);
        assert!(!o.debug);
        assert_eq!(o.warnings.len(), 5, "{:?}", o.warnings);
        assert!(o.warnings.iter().any(|w| w.contains("keel.frobnicate")));
        assert!(o.warnings.iter().any(|w| w.contains("explode")));
    }

    #[test]
    fn syslog_destinations() {
        use crate::logging::syslog::{Destination, FacilityCode, Format};
        let o = parse("keel.syslog=udp://10.0.2.2:514");
        let c = o.syslog.unwrap();
        assert_eq!(c.destination, Destination::Udp("10.0.2.2:514".parse().unwrap()));
        assert_eq!((c.facility, c.format()), (FacilityCode::DAEMON, Format::Rfc5424));
        let c = parse("keel.syslog_facility=local3 keel.syslog=tcp://[fd00::1] keel.syslog_format=rfc3164")
            .syslog
            .unwrap();
        assert_eq!(c.destination, Destination::Tcp("[fd00::1]:514".parse().unwrap()));
        assert_eq!((c.facility, c.format()), (FacilityCode(19), Format::Rfc3164));
        let c = parse("keel.syslog=unix:/dev/log").syslog.unwrap();
        assert_eq!(c.destination, Destination::Unix("/dev/log".into()));
        assert_eq!(c.format(), Format::Rfc3164, "what local daemons expect");
        assert_eq!(
            parse("keel.syslog=unix:///dev/log").syslog.unwrap().destination,
            Destination::Unix("/dev/log".into())
        );
        assert_eq!(
            parse("keel.syslog=udp://192.0.2.7").syslog.unwrap().destination,
            Destination::Udp("192.0.2.7:514".parse().unwrap())
        );
        for bad in [
            "keel.syslog=udp://logs.example:514",
            "keel.syslog=http://10.0.0.1",
            "keel.syslog=unix:dev/log",
            "keel.syslog",
            "keel.syslog=tcp://10.0.0.1:99999",
        ] {
            let o = parse(bad);
            assert!(o.syslog.is_none(), "{bad}");
            assert_eq!(o.warnings.len(), 1, "{bad}: {:?}", o.warnings);
        }
        assert!(parse("keel.syslog=udp://logs.example").warnings[0].contains("must be an IP address"));
        let o = parse("keel.syslog=udp://10.0.0.1 keel.syslog_facility=mars keel.syslog_format=json");
        assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
        assert_eq!(o.syslog.unwrap().facility, FacilityCode::DAEMON);
        assert_eq!(parse("keel.syslog_facility=user").warnings.len(), 1);
    }

    #[test]
    fn quoted_words() {
        assert_eq!(words(r#"a "b c" d="e f" g"#), vec!["a", "b c", "d=e f", "g"]);
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(words(r#"x="""#), vec!["x="]);
    }

    #[test]
    fn reboot_and_halt_policies() {
        assert_eq!(
            parse("keel.onboot_failure=reboot").onboot_failure,
            OnbootFailure::Reboot
        );
        assert_eq!(
            parse("keel.onboot_failure=halt").onboot_failure,
            OnbootFailure::Halt
        );
        assert!(!parse("keel.onboot_failure=continue keel.debug=0").debug);
    }
}
