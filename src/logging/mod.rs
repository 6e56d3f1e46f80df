//! PID 1's own log: one line per event on the console, `[  uptime] keel: message`.
//! Works before /dev exists (the kernel's stderr), falls back to /dev/kmsg, and silently
//! drops lines when there is nowhere to write: logging never stops init.

pub mod capture;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

enum Sink {
    /// A file descriptor inherited from the kernel (or the caller), not ours to close.
    Fd(i32),
    Console(File),
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

fn format_line(level: Level, msg: &str) -> String {
    let tag = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        _ => "",
    };
    // One event per line, even if a message carries newlines (from a container, say).
    let msg = msg.replace('\n', " | ");
    format!("[{:>12.6}] keel: {tag}{msg}\n", uptime())
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || !record.target().starts_with("keel") {
            return;
        }
        let msg = record.args().to_string();
        let line = format_line(record.level(), &msg);
        {
            let (stream, tag) = match record.level() {
                Level::Error => (capture::Stream::Stderr, "error: "),
                Level::Warn => (capture::Stream::Stderr, "warning: "),
                _ => (capture::Stream::Stdout, ""),
            };
            let ts = std::time::Duration::from_secs_f64(uptime());
            with_own_mut(|ring| ring.push(ts, stream, &format!("{tag}{msg}")));
        }
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let ok = match &mut *sink {
            Sink::Fd(fd) => nix::unistd::write(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) },
                line.as_bytes(),
            )
            .is_ok(),
            Sink::Console(f) => f.write_all(line.as_bytes()).is_ok(),
            Sink::Kmsg(f) => {
                let prio = match record.level() {
                    Level::Error => 3,
                    Level::Warn => 4,
                    Level::Info => 6,
                    _ => 7,
                };
                // kmsg adds its own timestamp; drop ours.
                let body = line.split_once("] ").map(|x| x.1).unwrap_or(&line);
                f.write_all(format!("<{prio}>{body}").as_bytes()).is_ok()
            }
            Sink::None => true,
        };
        if !ok {
            // A console that fails (gone, or never backed by a device) hands over to the
            // kernel log; when that fails too, stop trying rather than loop on errors.
            *sink = match &*sink {
                Sink::Fd(_) | Sink::Console(_) => open_kmsg().map(Sink::Kmsg).unwrap_or(Sink::None),
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
        Some(f) => Sink::Console(f),
        None => open_kmsg().map(Sink::Kmsg).unwrap_or(Sink::None),
    };
    *LOGGER.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_single() {
        let l = format_line(Level::Warn, "service x\nexited");
        assert!(l.starts_with('['), "{l}");
        assert!(l.ends_with("] keel: warning: service x | exited\n"), "{l}");
        assert_eq!(l.matches('\n').count(), 1);
        assert!(format_line(Level::Info, "hi").ends_with("] keel: hi\n"));
        assert!(format_line(Level::Error, "bad").contains("keel: error: bad"));
    }
}
