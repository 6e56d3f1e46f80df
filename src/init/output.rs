//! Containers' output. Each run gets a pipe per stream; PID 1 reads them without ever
//! blocking and files every line three ways: the unit's in-memory ring (for `keel ctl logs`),
//! its rotating file under /var/log, and the console, prefixed with the unit's name. The
//! console copy is best effort: when the console cannot keep up, lines are dropped and
//! counted rather than stalling PID 1.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::logging::capture::{LineAssembler, Ring, RotatingFile, Stream};

/// Plus `unit id * 2 + stream`: a container's stdout or stderr pipe.
pub const TOKEN_LOG: u64 = 2 << 32;
/// Memory kept per unit for `keel ctl logs`.
pub const RING_BYTES: usize = 64 * 1024;
pub const FILE_BYTES: u64 = 1024 * 1024;
pub const FILE_KEEP: usize = 2;
/// Bytes read from one pipe per wake-up, so one chatty container cannot starve the rest.
const READ_BUDGET: usize = 64 * 1024;

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

struct Pipe {
    file: File,
    asm: LineAssembler,
}

struct UnitLog {
    name: String,
    echo: bool,
    ring: Ring,
    file: RotatingFile,
    pipes: [Option<Pipe>; 2],
}

/// Where container lines are echoed.
pub struct Console {
    file: File,
    dropped: u64,
}

impl Console {
    /// The console, opened non-blocking (its own open file description, so PID 1's own log
    /// lines, written elsewhere, stay blocking and complete).
    pub fn open() -> Option<Console> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/console")
            .ok()
            .map(|file| Console { file, dropped: 0 })
    }

    /// Development mode: echo to our stderr.
    pub fn stderr() -> Option<Console> {
        let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
        Some(Console {
            file: File::from(fd),
            dropped: 0,
        })
    }

    fn line(&mut self, name: &str, text: &str) {
        if self.dropped > 0 {
            let note = format!(
                "keel: {} lines of container output not shown (console busy)\n",
                self.dropped
            );
            if !matches!(self.file.write(note.as_bytes()), Ok(n) if n == note.len()) {
                self.dropped += 1;
                return;
            }
            self.dropped = 0;
        }
        let line = format!("{name} | {text}\n");
        // One write: a partial or refused write drops (the rest of) this line only.
        if !matches!(self.file.write(line.as_bytes()), Ok(n) if n == line.len()) {
            self.dropped += 1;
        }
    }
}

pub struct Outputs {
    units: Vec<UnitLog>,
    console: Option<Console>,
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Outputs {
    /// `units`: (display name, log file stem, echo on the console) per unit id.
    pub fn new(units: Vec<(String, String, bool)>, dir: &Path, console: Option<Console>) -> Self {
        Outputs {
            units: units
                .into_iter()
                .map(|(name, stem, echo)| UnitLog {
                    name,
                    echo,
                    ring: Ring::new(RING_BYTES),
                    file: RotatingFile::new(dir.join(format!("{stem}.log")), FILE_BYTES, FILE_KEEP),
                    pipes: [None, None],
                })
                .collect(),
            console,
        }
    }

    pub fn ring(&self, id: usize) -> Option<&Ring> {
        self.units.get(id).map(|u| &u.ring)
    }

    /// Fresh pipes for the unit's next run; returns the write ends (stdout, stderr) for the
    /// container. Earlier pipes of the unit are closed first.
    pub fn open(&mut self, id: usize, epoll: &Epoll, now: Duration) -> Result<(OwnedFd, OwnedFd), String> {
        self.close(id, epoll, now);
        let mut ends = Vec::with_capacity(2);
        for s in STREAMS {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| format!("cannot create the {} pipe: {e}", s.tag()))?;
            fcntl(r.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(|e| format!("cannot make the {} pipe non-blocking: {e}", s.tag()))?;
            let token = TOKEN_LOG + (id * 2 + stream_index(s)) as u64;
            epoll
                .add(r.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
                .map_err(|e| format!("cannot watch the {} pipe: {e}", s.tag()))?;
            if let Some(u) = self.units.get_mut(id) {
                u.pipes[stream_index(s)] = Some(Pipe {
                    file: File::from(r),
                    asm: LineAssembler::new(),
                });
            }
            ends.push(w);
        }
        let err = ends.pop().ok_or("no stderr pipe")?;
        let out = ends.pop().ok_or("no stdout pipe")?;
        Ok((out, err))
    }

    /// The pipe behind an epoll token, if it is one of ours.
    pub fn token(t: u64) -> Option<(usize, Stream)> {
        let n = t.checked_sub(TOKEN_LOG)? as usize;
        Some((n / 2, STREAMS[n % 2]))
    }

    /// Read what is there, up to a budget; on end-of-file the pipe is closed. True when the
    /// budget ran out before the pipe was empty.
    pub fn read(&mut self, id: usize, stream: Stream, epoll: &Epoll, now: Duration) -> bool {
        let Some(u) = self.units.get_mut(id) else {
            return false;
        };
        let i = stream_index(stream);
        let Some(pipe) = u.pipes[i].as_mut() else {
            return false;
        };
        let mut buf = [0u8; 4096];
        let mut total = 0;
        let mut eof = false;
        while total < READ_BUDGET {
            match pipe.file.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    let console = if u.echo { &mut self.console } else { &mut None };
                    let (ring, file, name) = (&mut u.ring, &mut u.file, &u.name);
                    pipe.asm.feed(&buf[..n], &mut |line| {
                        record(ring, file, console, name, now, stream, line)
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.finish(id, i, epoll, now);
        }
        !eof && total >= READ_BUDGET
    }

    /// The unit's run is over: read what is left in its pipes, then close them. Bounded, in
    /// case something that outlived the container still holds a pipe and keeps writing.
    pub fn close(&mut self, id: usize, epoll: &Epoll, now: Duration) {
        for s in STREAMS {
            for _ in 0..16 {
                if !self.read(id, s, epoll, now) {
                    break;
                }
            }
            self.finish(id, stream_index(s), epoll, now);
        }
    }

    fn finish(&mut self, id: usize, i: usize, epoll: &Epoll, now: Duration) {
        let Some(u) = self.units.get_mut(id) else { return };
        if let Some(mut pipe) = u.pipes[i].take() {
            let _ = epoll.delete(pipe.file.as_fd());
            let (ring, file, console, name) = (&mut u.ring, &mut u.file, &mut self.console, &u.name);
            pipe.asm
                .flush(&mut |line| record(ring, file, console, name, now, STREAMS[i], line));
        }
    }
}

fn record(
    ring: &mut Ring,
    file: &mut RotatingFile,
    console: &mut Option<Console>,
    name: &str,
    now: Duration,
    stream: Stream,
    line: &str,
) {
    ring.push(now, stream, line);
    let was_failing = file.is_failing();
    if let Err(e) = file.write_line(now, stream, line) {
        if !was_failing {
            log::warn!("{e}; {name}'s output is kept in memory only until this recovers");
        }
    }
    if let Some(c) = console.as_mut() {
        c.line(name, line);
    }
}
