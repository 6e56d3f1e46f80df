//! Containers' output. Each run gets a pipe per stream; PID 1 reads them without ever
//! blocking and files every line up to four ways: the unit's in-memory ring (for `keel ctl
//! logs`), its rotating file under /var/log, the console, prefixed with the unit's name, and
//! the syslog destination when there is one. The console and syslog copies are best effort:
//! when they cannot keep up, lines are dropped and counted rather than stalling PID 1.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::logging::capture::{LineAssembler, Ring, RotatingFile, Stream};
use crate::logging::syslog::{self, Forwarder};

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
    /// The syslog APP-NAME: the log file's stem (`web`, `onboot-format`).
    app: String,
    /// The container's PID (as PID 1 sees it) in its current or last run.
    pid: u32,
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
    syslog: Option<Forwarder>,
    dir: LogDir,
}

/// The directory of the log files, held open: when a filesystem is mounted over it (a
/// persistent disk, by an onboot container), the files written so far are still reachable
/// through this handle, to be moved onto the new filesystem.
struct LogDir {
    path: PathBuf,
    handle: Option<File>,
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl LogDir {
    fn open(path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .ok();
        LogDir {
            path: path.to_path_buf(),
            handle,
        }
    }

    /// Whether the path now leads to another directory than the one held. A disk mounted
    /// over a parent (/var) may have no such directory yet: it is made there.
    fn replaced(&self) -> bool {
        use std::os::unix::fs::DirBuilderExt;
        let now = std::fs::metadata(&self.path)
            .or_else(|_| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&self.path)?;
                std::fs::metadata(&self.path)
            })
            .ok()
            .map(|m| identity(&m));
        let held = self
            .handle
            .as_ref()
            .and_then(|h| h.metadata().ok())
            .map(|m| identity(&m));
        matches!((now, held), (Some(n), Some(h)) if n != h)
    }
}

/// The whole of `name` in the directory `dir` (None if it does not exist), at most `max`
/// bytes: earlier log files are bounded by their rotation size.
fn read_in(dir: &File, name: &std::ffi::OsStr, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let fd = match nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Outputs {
    /// `units`: (display name, log file stem, echo on the console) per unit id.
    pub fn new(
        units: Vec<(String, String, bool)>,
        dir: &Path,
        console: Option<Console>,
        syslog: Option<Forwarder>,
    ) -> Self {
        Outputs {
            units: units
                .into_iter()
                .map(|(name, stem, echo)| UnitLog {
                    name,
                    pid: 0,
                    echo,
                    ring: Ring::new(RING_BYTES),
                    file: RotatingFile::new(dir.join(format!("{stem}.log")), FILE_BYTES, FILE_KEEP),
                    app: stem,
                    pipes: [None, None],
                })
                .collect(),
            console,
            syslog,
            dir: LogDir::open(dir),
        }
    }

    /// Follow the log directory onto a filesystem mounted over it since the files were
    /// opened: the files are reopened there, and what they held so far is appended to the
    /// files of the same name there (then removed from below the mount, where it would be
    /// hidden and, on the initramfs, hold memory). With `force` the files are reopened even
    /// when the directory is the same (after they were moved away, say).
    pub fn follow_log_dir(&mut self, force: bool) {
        if !self.dir.replaced() {
            if self.dir.handle.is_none() {
                self.dir = LogDir::open(&self.dir.path);
            }
            if force {
                self.units.iter_mut().for_each(|u| u.file.reopen());
                log::info!("log files in {} reopened", self.dir.path.display());
            }
            return;
        }
        let old = LogDir::open(&self.dir.path);
        let old = std::mem::replace(&mut self.dir, old);
        let (mut moved, mut left) = (Vec::new(), Vec::new());
        for u in &mut self.units {
            u.file.reopen();
            let Some(below) = old.handle.as_ref() else {
                continue;
            };
            for name in u.file.file_names() {
                let shown = name.to_string_lossy().into_owned();
                let content = match read_in(below, &name, 2 * FILE_BYTES) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        left.push(format!("{shown} ({e})"));
                        continue;
                    }
                };
                match u.file.append_block(&content) {
                    Ok(()) => {
                        let _ = nix::unistd::unlinkat(
                            Some(below.as_raw_fd()),
                            name.as_os_str(),
                            nix::unistd::UnlinkatFlags::NoRemoveDir,
                        );
                        moved.push(format!("{shown} ({} bytes)", content.len()));
                    }
                    Err(e) => left.push(format!("{shown} ({e})")),
                }
            }
        }
        let path = self.dir.path.display();
        let moved = match moved.is_empty() {
            true => "no earlier log files to move".to_string(),
            false => format!("earlier log files appended there: {}", moved.join(", ")),
        };
        log::info!(target: crate::logging::OK,
            "{path} is on another filesystem now: log files reopened there; {moved}"
        );
        if !left.is_empty() {
            log::warn!(
                "{path}: earlier log files left below the new mount: {}",
                left.join(", ")
            );
        }
    }

    /// Close every log file and the directory (so that its filesystem can be unmounted).
    pub fn close_files(&mut self) {
        self.units.iter_mut().for_each(|u| u.file.reopen());
        self.dir.handle = None;
    }

    /// The unit's container PID, for the syslog messages of its run.
    pub fn set_pid(&mut self, id: usize, pid: i32) {
        if let Some(u) = self.units.get_mut(id) {
            u.pid = u32::try_from(pid).unwrap_or(0);
        }
    }

    pub fn syslog(&mut self) -> Option<&mut Forwarder> {
        self.syslog.as_mut()
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
                    let mut sink = Sinks {
                        ring: &mut u.ring,
                        file: &mut u.file,
                        console,
                        syslog: &mut self.syslog,
                        name: &u.name,
                        app: &u.app,
                        pid: u.pid,
                    };
                    pipe.asm
                        .feed(&buf[..n], &mut |line| sink.record(now, stream, line));
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
            let console = if u.echo { &mut self.console } else { &mut None };
            let mut sink = Sinks {
                ring: &mut u.ring,
                file: &mut u.file,
                console,
                syslog: &mut self.syslog,
                name: &u.name,
                app: &u.app,
                pid: u.pid,
            };
            pipe.asm.flush(&mut |line| sink.record(now, STREAMS[i], line));
        }
    }
}

/// Everything one unit's line goes to.
struct Sinks<'a> {
    ring: &'a mut Ring,
    file: &'a mut RotatingFile,
    console: &'a mut Option<Console>,
    syslog: &'a mut Option<Forwarder>,
    name: &'a str,
    app: &'a str,
    pid: u32,
}

impl Sinks<'_> {
    fn record(&mut self, now: Duration, stream: Stream, line: &str) {
        self.ring.push(now, stream, line);
        let was_failing = self.file.is_failing();
        if let Err(e) = self.file.write_line(now, stream, line) {
            if !was_failing {
                log::warn!(
                    "{e}; {}'s output is kept in memory only until this recovers",
                    self.name
                );
            }
        }
        if let Some(c) = self.console.as_mut() {
            c.line(self.name, line);
        }
        if let Some(f) = self.syslog.as_mut() {
            f.push(&syslog::Message {
                app: self.app,
                pid: self.pid,
                level: syslog::stream_level(stream),
                stream: syslog::stream_number(stream),
                text: line,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::EpollCreateFlags;

    fn write(out: &mut Outputs, id: usize, epoll: &Epoll, lines: &str) {
        let (o, e) = out.open(id, epoll, Duration::from_secs(1)).unwrap();
        File::from(o).write_all(lines.as_bytes()).unwrap();
        drop(e);
        out.close(id, epoll, Duration::from_secs(2));
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// A directory put in place of the log directory stands for a disk mounted over it: the
    /// held handle still leads to the old one, the path to the new one.
    #[test]
    fn log_files_follow_the_directory_and_carry_their_lines_over() {
        let base = std::env::temp_dir().join(format!("keel-logdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("log");
        std::fs::create_dir_all(&dir).unwrap();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let units = vec![
            ("disk".to_string(), "onboot-disk".to_string(), false),
            ("web".to_string(), "web".to_string(), false),
        ];
        let mut out = Outputs::new(units, &dir, None, None);
        write(&mut out, 0, &epoll, "mounting\nmounted\n");
        assert!(read(&dir.join("onboot-disk.log")).ends_with(" out mounted\n"));
        out.follow_log_dir(false);
        assert!(
            dir.join("onboot-disk.log").exists(),
            "nothing changed: nothing moved"
        );

        std::fs::rename(&dir, base.join("below")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("onboot-disk.log"), "1.000000 out from the last boot\n").unwrap();
        out.follow_log_dir(false);
        let disk = read(&dir.join("onboot-disk.log"));
        let lines: Vec<_> = disk.lines().collect();
        assert_eq!(lines.len(), 3, "{disk}");
        assert_eq!(lines[0], "1.000000 out from the last boot");
        assert!(
            lines[1].ends_with(" out mounting") && lines[2].ends_with(" out mounted"),
            "{disk}"
        );
        assert!(!base.join("below/onboot-disk.log").exists(), "moved, not copied");
        // New lines go to the new place; a unit that had written nothing starts there.
        write(&mut out, 0, &epoll, "after\n");
        write(&mut out, 1, &epoll, "serving\n");
        assert!(read(&dir.join("onboot-disk.log")).ends_with(" out after\n"));
        assert!(read(&dir.join("web.log")).ends_with(" out serving\n"));
        assert!(!base.join("below/web.log").exists());
        // A new parent without the directory (a disk mounted over /var): made, and followed.
        std::fs::rename(&base, base.with_extension("var")).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        out.follow_log_dir(false);
        assert!(
            read(&dir.join("web.log")).ends_with(" out serving\n"),
            "carried over"
        );
        std::fs::remove_dir_all(base.with_extension("var")).unwrap();
        // Closed for the unmount at shutdown; a forced reopen finds the same files.
        out.close_files();
        assert!(out.dir.handle.is_none());
        out.follow_log_dir(true);
        assert!(out.dir.handle.is_some());
        write(&mut out, 1, &epoll, "again\n");
        let web = read(&dir.join("web.log"));
        assert!(
            web.contains(" out serving\n") && web.ends_with(" out again\n"),
            "{web}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
