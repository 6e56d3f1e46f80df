//! Progress of a build on standard error. On a terminal one status line is redrawn as work
//! advances (images and layers unpacked, bytes written); otherwise only results and warnings
//! are printed, one line each, so logs stay readable.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress<W: Write> {
    out: W,
    tty: bool,
    /// A status line is on screen (no newline after it yet).
    drawn: bool,
    last: Option<Instant>,
}

/// Redraws closer together than this are skipped (bytes arrive in small writes).
const REDRAW: Duration = Duration::from_millis(100);

impl Progress<std::io::Stderr> {
    pub fn stderr() -> Self {
        use std::io::IsTerminal;
        let err = std::io::stderr();
        let tty = err.is_terminal();
        Progress::new(err, tty)
    }
}

impl<W: Write> Progress<W> {
    pub fn new(out: W, tty: bool) -> Self {
        Progress {
            out,
            tty,
            drawn: false,
            last: None,
        }
    }

    /// A result or a warning: always printed, on a line of its own.
    pub fn say(&mut self, msg: &str) {
        self.clear();
        let _ = writeln!(self.out, "keel build: {msg}");
    }

    /// Where the build is: shown on a terminal (rate-limited unless `force`), dropped elsewhere.
    pub fn status(&mut self, msg: &str, force: bool) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|t| now.duration_since(t) < REDRAW) {
            return;
        }
        self.last = Some(now);
        let _ = write!(self.out, "\r\x1b[Kkeel build: {msg}");
        let _ = self.out.flush();
        self.drawn = true;
    }

    /// Remove the status line, if any.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(self.out, "\r\x1b[K");
            self.drawn = false;
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A writer that counts what passes through and reports it.
pub struct Counting<W: Write, F: FnMut(u64)> {
    pub inner: W,
    pub count: u64,
    pub report: F,
}

impl<W: Write, F: FnMut(u64)> Write for Counting<W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        (self.report)(self.count);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_one_redrawn_line_and_a_pipe_only_results() {
        let mut tty = Progress::new(Vec::new(), true);
        tty.status("unpacking 1/2", true);
        tty.status("unpacking 2/2", true);
        tty.say("wrote initrd.img");
        let out = String::from_utf8(tty.into_inner()).unwrap();
        assert_eq!(
            out,
            "\r\x1b[Kkeel build: unpacking 1/2\r\x1b[Kkeel build: unpacking 2/2\r\x1b[Kkeel build: wrote initrd.img\n"
        );

        let mut pipe = Progress::new(Vec::new(), false);
        pipe.status("unpacking 1/2", true);
        pipe.say("wrote initrd.img");
        let out = String::from_utf8(pipe.into_inner()).unwrap();
        assert_eq!(out, "keel build: wrote initrd.img\n");
    }

    #[test]
    fn redraws_are_rate_limited_unless_forced() {
        let mut tty = Progress::new(Vec::new(), true);
        tty.status("a", false);
        tty.status("b", false);
        tty.status("c", true);
        let out = String::from_utf8(tty.into_inner()).unwrap();
        assert!(
            out.contains(": a") && !out.contains(": b") && out.contains(": c"),
            "{out:?}"
        );
    }

    #[test]
    fn byte_counts_read_well_and_counting_passes_data_through() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        let mut seen = Vec::new();
        let mut w = Counting {
            inner: Vec::new(),
            count: 0,
            report: |n| seen.push(n),
        };
        w.write_all(b"abc").unwrap();
        w.write_all(b"de").unwrap();
        assert_eq!(w.inner, b"abcde");
        assert_eq!(w.count, 5);
        drop(w);
        assert_eq!(seen, [3, 5]);
    }
}
