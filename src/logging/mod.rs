//! PID 1's own log: one line per event on the console, `[  uptime] keel: message`.
//! Works before /dev exists (the kernel's stderr), falls back to /dev/kmsg, and silently
//! drops lines when there is nowhere to write: logging never stops init.

pub mod capture;
pub mod syslog;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

enum Sink {
    /// A file descriptor inherited from the kernel (or the caller), not ours to close.
    Fd(i32),
    /// The console, and whether it is a terminal (colours).
    Console(File, bool),
    /// /dev/kmsg wants one record per write, with a syslog priority prefix.
    Kmsg(File),
    None,
}

struct ConsoleLogger {
    sink: Mutex<Sink>,
}

static LOGGER: ConsoleLogger = ConsoleLogger {
    sink: Mutex::new(Sink::Fd(2)),
};

/// PID 1's own messages from the first one on, for `keel ctl logs keel` (bounded).
static OWN: Mutex<Option<capture::Ring>> = Mutex::new(None);
const OWN_RING_BYTES: usize = 32 * 1024;

fn with_own_mut<R>(f: impl FnOnce(&mut capture::Ring) -> R) -> R {
    let mut own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    f(own.get_or_insert_with(|| capture::Ring::new(OWN_RING_BYTES)))
}

/// Read PID 1's own message ring.
pub fn with_own<R>(f: impl FnOnce(&capture::Ring) -> R) -> R {
    with_own_mut(|r| f(r))
}

/// Seconds since boot, as the kernel prints them.
pub fn uptime() -> f64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9,
        Err(_) => 0.0,
    }
}

/// The log target of messages about something that went well (`[  OK  ]`).
pub const OK: &str = "keel::ok";

/// A message's status tag, as on systemd's console, and its ANSI colour.
fn status(level: Level, target: &str) -> Option<(&'static str, &'static str)> {
    match level {
        Level::Error => Some(("FAILED", "1;31")),
        Level::Warn => Some((" WARN ", "1;33")),
        Level::Info if target == OK => Some(("  OK  ", "32")),
        _ => None,
    }
}

/// The syslog severity of one of PID 1's own messages, from its tag, and its text without it.
pub fn own_level(text: &str) -> (syslog::Level, &str) {
    for (t, level) in [
        ("[FAILED] ", syslog::Level::Error),
        ("[ WARN ] ", syslog::Level::Warning),
        ("[  OK  ] ", syslog::Level::Notice),
    ] {
        if let Some(rest) = text.strip_prefix(t) {
            return (level, rest);
        }
    }
    (syslog::Level::Info, text)
}

fn tag(level: Level, target: &str, colour: bool) -> String {
    match status(level, target) {
        Some((t, c)) if colour => format!("[\x1b[{c}m{t}\x1b[0m] "),
        Some((t, _)) => format!("[{t}] "),
        None => String::new(),
    }
}

fn format_line(level: Level, target: &str, msg: &str, colour: bool) -> String {
    // One event per line, even if a message carries newlines (from a container, say).
    let msg = msg.replace('\n', " | ");
    format!("[{:>12.6}] keel: {}{msg}\n", uptime(), tag(level, target, colour))
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("keel") {
            return;
        }
        let (level, target) = (record.level(), record.target());
        let msg = record.args().to_string();
        {
            let stream = match level {
                Level::Error | Level::Warn => capture::Stream::Stderr,
                _ => capture::Stream::Stdout,
            };
            let ts = std::time::Duration::from_secs_f64(uptime());
            let text = format!("{}{msg}", tag(level, target, false));
            with_own_mut(|ring| ring.push(ts, stream, &text));
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let ok = match &mut *sink {
            Sink::Fd(fd) => {
                let colour = nix::unistd::isatty(*fd).unwrap_or(false);
                // SAFETY: fd 2 (or the caller's) stays open for the process's life.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                nix::unistd::write(fd, format_line(level, target, &msg, colour).as_bytes()).is_ok()
            }
            Sink::Console(f, colour) => f
                .write_all(format_line(level, target, &msg, *colour).as_bytes())
                .is_ok(),
            Sink::Kmsg(f) => {
                let prio = match record.level() {
                    Level::Error => 3,
                    Level::Warn => 4,
                    Level::Info => 6,
                    _ => 7,
                };
                // kmsg adds its own timestamp.
                let body = format!("<{prio}>keel: {}{msg}\n", tag(level, target, false));
                f.write_all(body.as_bytes()).is_ok()
            }
            Sink::None => true,
        };
        if !ok {
            // A console that fails (gone, or never backed by a device) hands over to the
            // kernel log; when that fails too, stop trying rather than loop on errors.
            *sink = match &*sink {
                Sink::Fd(_) | Sink::Console(..) => open_kmsg().map(Sink::Kmsg).unwrap_or(Sink::None),
                _ => Sink::None,
            };
        }
    }

    fn flush(&self) {}
}

/// Install the logger, writing to fd 2 until `open_console` finds a better place.
pub fn init(debug: bool) {
    let _ = log::set_logger(&LOGGER);
    set_debug(debug);
}

pub fn set_debug(debug: bool) {
    log::set_max_level(if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
}

pub fn set_quiet() {
    log::set_max_level(LevelFilter::Warn);
}

fn open_write(path: &str) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()
}

fn open_kmsg() -> Option<File> {
    open_write("/dev/kmsg")
}

/// Switch to /dev/console, or /dev/kmsg when there is no console (once /dev is mounted).
pub fn open_console() {
    let sink = match open_write("/dev/console") {
        Some(f) => {
            let tty = nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap_or(false);
            Sink::Console(f, tty)
        }
        None => open_kmsg().map(Sink::Kmsg).unwrap_or(Sink::None),
    };
    *LOGGER.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_tagged_and_single() {
        let l = format_line(Level::Warn, "keel", "service x\nexited", false);
        assert!(l.starts_with('['), "{l}");
        assert!(l.ends_with("] keel: [ WARN ] service x | exited\n"), "{l}");
        assert_eq!(l.matches('\n').count(), 1);
        assert!(format_line(Level::Info, "keel", "hi", false).ends_with("] keel: hi\n"));
        assert!(format_line(Level::Info, OK, "up", false).ends_with("] keel: [  OK  ] up\n"));
        assert!(format_line(Level::Error, "keel", "bad", false).contains("keel: [FAILED] bad"));
        let coloured = format_line(Level::Error, "keel", "bad", true);
        assert!(
            coloured.contains("keel: [\x1b[1;31mFAILED\x1b[0m] bad"),
            "{coloured:?}"
        );
    }
}
