//! Capture of containers' output: bytes read from a service's stdout and stderr pipes
//! become lines, kept in a bounded in-memory ring (for `logs`) and appended to a rotating
//! file. PID 1 cannot trust a container to write politely, so every structure here has a
//! hard memory bound, and nothing here reads the clock, blocks on a pipe, or panics.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest line kept whole, in input bytes; longer lines are emitted in pieces, so a
/// container that never writes '\n' cannot make PID 1 buffer without limit.
pub const MAX_LINE: usize = 4096;

/// Which of a container's output pipes a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Short fixed-width tag for log files and `logs` output.
    pub fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// Turns the arbitrary chunks a pipe read returns into lines (one assembler per stream,
/// so a service's stdout and stderr never mix within a line).
///
/// Lines are emitted without their '\n' and one trailing '\r'. A line longer than
/// [`MAX_LINE`] bytes is emitted in pieces of at most `MAX_LINE` input bytes; a piece is
/// cut before a UTF-8 character that straddles the limit (so it may be up to 3 bytes
/// shorter). Invalid UTF-8 is replaced lossily with U+FFFD, which can make the emitted
/// text longer than its input bytes.
#[derive(Debug, Default)]
pub struct LineAssembler {
    buf: Vec<u8>,
    /// A '\r' that ended the previous feed: dropped if the next byte is '\n', kept
    /// otherwise, so CRLF split across two reads still loses its CR.
    cr: bool,
}

impl LineAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the partial line waiting for its end: at most `MAX_LINE`, plus a
    /// held-back '\r'.
    pub fn pending(&self) -> usize {
        self.buf.len() + usize::from(self.cr)
    }

    /// Hand over the bytes of one read; `out` is called for each line they complete.
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(&str)) {
        // n newlines give n + 1 pieces: every piece but the last ends a line.
        let mut pieces = bytes.split(|&b| b == b'\n');
        let mut piece = pieces.next().unwrap_or_default();
        for next in pieces {
            self.append(piece, out);
            self.cr = false;
            self.emit_all(out);
            piece = next;
        }
        self.append(piece, out);
    }

    /// Emit the partial line, if any: at EOF the last line may have no '\n'.
    pub fn flush(&mut self, out: &mut impl FnMut(&str)) {
        self.cr = false;
        if !self.buf.is_empty() {
            self.emit_all(out);
        }
    }

    fn append(&mut self, bytes: &[u8], out: &mut impl FnMut(&str)) {
        if bytes.is_empty() {
            return;
        }
        if std::mem::take(&mut self.cr) {
            self.push(b"\r", out);
        }
        let bytes = match bytes.strip_suffix(b"\r") {
            Some(rest) => {
                self.cr = true;
                rest
            }
            None => bytes,
        };
        self.push(bytes, out);
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut impl FnMut(&str)) {
        if !bytes.is_empty() && self.buf.capacity() < MAX_LINE {
            // One exact allocation instead of Vec's doubling past the limit.
            self.buf.reserve_exact(MAX_LINE.saturating_sub(self.buf.len()));
        }
        while !bytes.is_empty() {
            // Only cut a full buffer once more bytes arrive, so a line of exactly
            // MAX_LINE bytes followed by '\n' stays one line.
            if self.buf.len() >= MAX_LINE {
                self.emit_piece(out);
            }
            let room = MAX_LINE.saturating_sub(self.buf.len()).min(bytes.len());
            let (now, later) = bytes.split_at(room);
            self.buf.extend_from_slice(now);
            bytes = later;
        }
    }

    fn emit_all(&mut self, out: &mut impl FnMut(&str)) {
        out(&String::from_utf8_lossy(&self.buf));
        self.buf.clear();
    }

    fn emit_piece(&mut self, out: &mut impl FnMut(&str)) {
        let len = self.buf.len();
        // A cut at 0 would make no progress; only possible if MAX_LINE were tiny.
        let cut = match utf8_cut(&self.buf) {
            0 => len,
            n => n.min(len),
        };
        out(&String::from_utf8_lossy(self.buf.get(..cut).unwrap_or_default()));
        self.buf.drain(..cut);
    }
}

/// Where to cut `buf` so that a multi-byte character at its end is not split: before the
/// lead byte of an incomplete trailing sequence, else at the end.
fn utf8_cut(buf: &[u8]) -> usize {
    for (back, &b) in buf.iter().rev().take(3).enumerate() {
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let width = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if width > back + 1 {
            buf.len().saturating_sub(back + 1)
        } else {
            buf.len()
        };
    }
    buf.len()
}

/// One captured line in a [`Ring`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the service's output since it was first captured; consecutive entries
    /// have consecutive numbers, so a gap tells a follower what it missed.
    pub seq: u64,
    /// Time since boot, as supplied by the caller.
    pub ts: Duration,
    pub stream: Stream,
    pub text: String,
}

/// Accounted cost of an entry besides its text: the size of the entry itself, so that
/// a flood of empty lines is bounded as well as a flood of long ones.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

/// Smallest byte budget a [`Ring`] accepts: room for one full-length line.
pub const MIN_BUDGET: usize = MAX_LINE + ENTRY_OVERHEAD;

/// The recent output of one service, bounded by bytes rather than lines so that its
/// memory does not depend on how the service writes.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Entry>,
    budget: usize,
    bytes: usize,
    next_seq: u64,
    dropped: u64,
}

impl Ring {
    /// `budget` counts each entry's text plus [`ENTRY_OVERHEAD`]; it is raised to
    /// [`MIN_BUDGET`] if smaller.
    pub fn new(budget: usize) -> Self {
        Ring {
            entries: VecDeque::new(),
            budget: budget.max(MIN_BUDGET),
            bytes: 0,
            next_seq: 1,
            dropped: 0,
        }
    }

    /// Add a line, evicting the oldest ones to stay within the budget; returns its
    /// sequence number. Text that could not fit even in an empty ring is truncated.
    pub fn push(&mut self, ts: Duration, stream: Stream, text: &str) -> u64 {
        let text = truncate(text, self.budget.saturating_sub(ENTRY_OVERHEAD));
        let cost = text.len() + ENTRY_OVERHEAD;
        while self.bytes + cost > self.budget {
            match self.entries.pop_front() {
                Some(old) => {
                    self.bytes = self.bytes.saturating_sub(old.text.len() + ENTRY_OVERHEAD);
                    self.dropped += 1;
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += cost;
        self.entries.push_back(Entry {
            seq,
            ts,
            stream,
            text: text.to_owned(),
        });
        seq
    }

    /// The most recent `n` entries, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter().skip(self.entries.len().saturating_sub(n))
    }

    /// For followers: the entries after sequence number `after` (0 for everything kept),
    /// and how many entries after it were evicted before they could be read.
    pub fn since(&self, after: u64) -> (u64, impl Iterator<Item = &Entry> + '_) {
        let first = self.entries.front().map_or(self.next_seq, |e| e.seq);
        let missed = first.saturating_sub(after.saturating_add(1));
        let skip = after.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        (missed, self.entries.iter().skip(skip))
    }

    /// Sequence number of the newest entry ever pushed (0 if none): where a follower
    /// that wants no backlog starts.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Accounted size of the kept entries; never more than `budget()`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// How many entries were evicted to make room since the ring was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot rotate {from} to {to}: {source}")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A service's log file, rotated by size so a chatty service cannot fill the disk.
///
/// Each line is one `write(2)` on an `O_APPEND` file with no user-space buffer, so a line
/// is either on disk or lost when PID 1 dies, never held back. After any error the file
/// is closed and the next write starts again from opening it, so logging resumes once
/// the disk does; [`RotatingFile::is_failing`] lets the caller report an outage once:
///
/// ```ignore
/// let was_failing = file.is_failing();
/// if let Err(e) = file.write_line(ts, stream, text) {
///     if !was_failing { log::warn!("{e}") }
/// }
/// ```
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    written: u64,
    failing: bool,
}

impl RotatingFile {
    /// Nothing is touched until the first write. At most `max_bytes` go in one file
    /// (unless a single line is longer); `keep` older files are kept as `path.1` (the
    /// newest) to `path.<keep>`; with `keep` 0 a full file is simply deleted.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64, keep: usize) -> Self {
        RotatingFile {
            path: path.into(),
            max_bytes,
            keep,
            file: None,
            written: 0,
            failing: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the current file, as far as this writer knows (0 before it is opened).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Whether the last write failed.
    pub fn is_failing(&self) -> bool {
        self.failing
    }

    /// Close the file: the next write opens the path again, wherever it now leads (after a
    /// filesystem was mounted over the directory, or the files were moved away).
    pub fn reopen(&mut self) {
        self.file = None;
        self.written = 0;
    }

    /// The names of this log's files, oldest first: `name.KEEP` ... `name.1`, `name`.
    pub fn file_names(&self) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = (1..=self.keep)
            .rev()
            .map(|n| self.numbered(n).into_os_string())
            .collect();
        names.push(self.path.clone().into_os_string());
        names
            .into_iter()
            .filter_map(|p| Path::new(&p).file_name().map(|n| n.to_os_string()))
            .collect()
    }

    /// Append a block of whole lines (the contents of an earlier file), rotating first if
    /// it does not fit in the current file.
    pub fn append_block(&mut self, block: &[u8]) -> Result<(), CaptureError> {
        let result = self.write_bytes(block);
        self.failing = result.is_err();
        result
    }

    /// Append `<seconds.micros> <out|err> <text>`, rotating first if the line would not
    /// fit. Newlines in `text` become " | " so one entry stays one line.
    pub fn write_line(&mut self, ts: Duration, stream: Stream, text: &str) -> Result<(), CaptureError> {
        let line = format_line(ts, stream, text);
        let result = self.write_bytes(line.as_bytes());
        self.failing = result.is_err();
        result
    }

    fn write_bytes(&mut self, line: &[u8]) -> Result<(), CaptureError> {
        // Taken out so that any early return leaves the file closed, to be reopened.
        let mut file = match self.file.take() {
            Some(f) => f,
            None => self.open()?,
        };
        let len = line.len() as u64;
        // A line longer than max_bytes still goes into a fresh file rather than
        // rotating empty files forever.
        if self.written > 0 && self.written.saturating_add(len) > self.max_bytes {
            drop(file);
            self.rotate()?;
            file = self.open()?;
        }
        file.write_all(line).map_err(|source| CaptureError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.written = self.written.saturating_add(len);
        self.file = Some(file);
        Ok(())
    }

    fn open(&mut self) -> Result<File, CaptureError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| CaptureError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let open_err = |source| CaptureError::Open {
            path: self.path.clone(),
            source,
        };
        // O_NOCTTY: PID 1 must not acquire a controlling terminal if pointed at a tty.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&self.path)
            .map_err(open_err)?;
        // Continue counting where a previous run (or a failed write) left the file.
        self.written = file.metadata().map_err(open_err)?.len();
        Ok(file)
    }

    /// Shift `path.N` to `path.N+1` from the oldest down, so each rename replaces the
    /// file it lands on and the oldest kept one disappears.
    fn rotate(&mut self) -> Result<(), CaptureError> {
        self.written = 0;
        if self.keep == 0 {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CaptureError::Remove {
                    path: self.path.clone(),
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        for n in (1..self.keep).rev() {
            rename_if_exists(&self.numbered(n), &self.numbered(n + 1))?;
        }
        rename_if_exists(&self.path, &self.numbered(1))
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), CaptureError> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CaptureError::Rotate {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn format_line(ts: Duration, stream: Stream, text: &str) -> String {
    let text = if text.contains('\n') {
        text.replace('\n', " | ").into()
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    format!(
        "{}.{:06} {} {}\n",
        ts.as_secs(),
        ts.subsec_micros(),
        stream.tag(),
        text
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lines(asm: &mut LineAssembler, chunks: &[&[u8]]) -> Vec<String> {
        let mut got = Vec::new();
        for c in chunks {
            asm.feed(c, &mut |l: &str| got.push(l.to_string()));
        }
        got
    }

    fn flushed(asm: &mut LineAssembler) -> Vec<String> {
        let mut got = Vec::new();
        asm.flush(&mut |l: &str| got.push(l.to_string()));
        got
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let mut a = LineAssembler::new();
        assert_eq!(lines(&mut a, &[b"hel", b"lo\nwor"]), ["hello"]);
        assert_eq!(a.pending(), 3);
        assert_eq!(lines(&mut a, &[b"ld\n\nlast"]), ["world", ""]);
        assert_eq!(flushed(&mut a), ["last"]);
        assert_eq!(flushed(&mut a), Vec::<String>::new());
        assert_eq!(a.pending(), 0);
        assert_eq!(lines(&mut a, &[b"", b"a\nb\nc\n"]), ["a", "b", "c"]);
    }

    #[test]
    fn crlf_loses_one_cr_even_when_split() {
        let mut a = LineAssembler::new();
        assert_eq!(lines(&mut a, &[b"dos\r\n"]), ["dos"]);
        assert_eq!(lines(&mut a, &[b"split\r", b"\n"]), ["split"]);
        assert_eq!(lines(&mut a, &[b"cr\r", b"", b"\n"]), ["cr"]);
        assert_eq!(lines(&mut a, &[b"mid\r", b"dle\n"]), ["mid\rdle"]);
        assert_eq!(lines(&mut a, &[b"two\r\r\n"]), ["two\r"]);
        assert_eq!(lines(&mut a, &[b"\r\n"]), [""]);
        lines(&mut a, &[b"eof\r"]);
        assert_eq!(flushed(&mut a), ["eof"]);
    }

    #[test]
    fn overlong_lines_are_cut_at_the_limit() {
        let mut a = LineAssembler::new();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut chunks: Vec<&[u8]> = long.chunks(1000).collect();
        chunks.push(b"\nnext\n");
        let got = lines(&mut a, &chunks);
        let lens: Vec<usize> = got.iter().map(|l| l.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10, 4]);
        assert_eq!(got[3], "next");
        // Same pieces when the pipe hands over one byte at a time.
        let mut a = LineAssembler::new();
        let bytes: Vec<&[u8]> = long.chunks(1).chain([&b"\n"[..]]).collect();
        let got = lines(&mut a, &bytes);
        let lens: Vec<usize> = got.iter().map(|l| l.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10]);
        // Never holds more than one line's worth.
        lines(&mut a, &[&vec![b'y'; MAX_LINE * 3 + 1]]);
        assert!(a.pending() <= MAX_LINE, "{}", a.pending());
    }

    #[test]
    fn a_line_of_exactly_the_limit_stays_whole() {
        let mut a = LineAssembler::new();
        let mut line = vec![b'x'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        let got = lines(&mut a, &[&line]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_LINE);
        // Same, with the CR and LF arriving in later reads.
        let got = lines(&mut a, &[&line[..MAX_LINE], b"\r", b"\n"]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_LINE);
    }

    #[test]
    fn multibyte_characters_are_not_split_at_the_cut() {
        for (ch, width) in [("é", 2), ("€", 3), ("🦀", 4)] {
            for shift in 0..width {
                let mut a = LineAssembler::new();
                let text = format!("{}{}\n", "a".repeat(MAX_LINE - width + 1 + shift), ch.repeat(3));
                let got = lines(&mut a, &[text.as_bytes()]);
                assert_eq!(got.len(), 2, "{ch} shift {shift}");
                assert!(got[0].len() <= MAX_LINE);
                assert!(!got.concat().contains('\u{FFFD}'), "{ch} shift {shift}");
                assert_eq!(got.concat(), text.trim_end(), "{ch} shift {shift}");
            }
        }
        // A character ending exactly at the limit is kept in the first piece.
        let mut a = LineAssembler::new();
        let text = format!("{}€tail\n", "a".repeat(MAX_LINE - 3));
        let got = lines(&mut a, &[text.as_bytes()]);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], "tail");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut a = LineAssembler::new();
        assert_eq!(lines(&mut a, &[b"a\xffb\n"]), ["a\u{FFFD}b"]);
        // A lead byte at the cut whose continuation never comes.
        let mut text = vec![b'a'; MAX_LINE - 1];
        text.extend_from_slice(b"\xe2zz\n");
        let got = lines(&mut a, &[&text]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE - 1);
        assert_eq!(got[1], "\u{FFFD}zz");
        // Garbage only: still bounded pieces, no panic.
        let got = lines(&mut a, &[&vec![0xff; MAX_LINE * 2 + 5], b"\n"]);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn stream_tags() {
        assert_eq!(Stream::Stdout.tag(), "out");
        assert_eq!(Stream::Stderr.to_string(), "err");
    }

    fn texts<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<String> {
        it.map(|e| e.text.clone()).collect()
    }

    #[test]
    fn ring_evicts_oldest_by_bytes() {
        let mut r = Ring::new(0);
        assert_eq!(r.budget(), MIN_BUDGET);
        let line = "x".repeat(1000);
        let per = 1000 + ENTRY_OVERHEAD;
        let fit = MIN_BUDGET / per;
        for i in 0..fit {
            assert_eq!(
                r.push(Duration::from_secs(i as u64), Stream::Stdout, &line),
                i as u64 + 1
            );
        }
        assert_eq!((r.len(), r.dropped(), r.bytes()), (fit, 0, fit * per));
        assert!(MIN_BUDGET - fit * per < per, "the next line must not fit");
        r.push(Duration::from_secs(99), Stream::Stderr, &"n".repeat(1000));
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.len(), fit);
        let first = r.last(usize::MAX).next().cloned();
        assert_eq!(first.map(|e| (e.seq, e.ts)), Some((2, Duration::from_secs(1))));
        let newest = r.last(1).next().cloned();
        assert_eq!(
            newest.map(|e| (e.seq, e.stream, e.text)),
            Some((fit as u64 + 1, Stream::Stderr, "n".repeat(1000)))
        );
        assert!(r.bytes() <= r.budget());
        // A line as big as the whole budget empties the ring and is truncated to fit.
        let huge = "é".repeat(MIN_BUDGET);
        r.push(Duration::ZERO, Stream::Stdout, &huge);
        assert_eq!(r.len(), 1);
        assert_eq!(r.dropped(), fit as u64 + 1);
        assert!(r.bytes() <= r.budget());
        assert!(r
            .last(1)
            .all(|e| huge.starts_with(&e.text) && e.text.len() + 1 >= MIN_BUDGET - ENTRY_OVERHEAD));
    }

    #[test]
    fn ring_last_returns_newest_oldest_first() {
        let mut r = Ring::new(64 * 1024);
        assert!(r.is_empty());
        assert_eq!(r.last(3).count(), 0);
        for s in ["a", "b", "c", "d"] {
            r.push(Duration::ZERO, Stream::Stdout, s);
        }
        assert_eq!(texts(r.last(2)), ["c", "d"]);
        assert_eq!(texts(r.last(10)), ["a", "b", "c", "d"]);
        assert_eq!(r.last(0).count(), 0);
    }

    #[test]
    fn ring_followers_see_gaps_after_eviction() {
        let mut r = Ring::new(0);
        assert_eq!(r.last_seq(), 0);
        let (missed, it) = r.since(0);
        assert_eq!((missed, it.count()), (0, 0));
        let line = "y".repeat(1000);
        for _ in 0..3 {
            r.push(Duration::ZERO, Stream::Stdout, &line);
        }
        let (missed, it) = r.since(1);
        assert_eq!((missed, it.map(|e| e.seq).collect::<Vec<_>>()), (0, vec![2, 3]));
        // Fill well past the budget: the oldest go, sequence numbers keep counting.
        for i in 0..20 {
            r.push(Duration::ZERO, Stream::Stdout, &format!("{i}{line}"));
        }
        assert_eq!(r.last_seq(), 23);
        let first = 23 - r.len() as u64 + 1;
        assert_eq!(r.dropped(), first - 1);
        let (missed, it) = r.since(3);
        let seqs: Vec<u64> = it.map(|e| e.seq).collect();
        assert_eq!(missed, first - 4);
        assert_eq!(seqs.first(), Some(&first));
        assert_eq!(seqs.last(), Some(&23));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        let (missed, it) = r.since(21);
        assert_eq!((missed, it.map(|e| e.seq).collect::<Vec<_>>()), (0, vec![22, 23]));
        let (missed, it) = r.since(23);
        assert_eq!((missed, it.count()), (0, 0));
        let (missed, it) = r.since(u64::MAX);
        assert_eq!((missed, it.count()), (0, 0));
    }

    #[test]
    fn ring_stays_within_budget_under_a_flood() {
        let budget = 64 * 1024;
        let mut r = Ring::new(budget);
        for i in 0..100_000u64 {
            let text = "z".repeat((i * 7919 % 300) as usize);
            r.push(Duration::from_millis(i), Stream::Stderr, &text);
            assert!(r.bytes() <= budget, "{} > {budget} at {i}", r.bytes());
        }
        let accounted: usize = r.last(usize::MAX).map(|e| e.text.len() + ENTRY_OVERHEAD).sum();
        assert_eq!(accounted, r.bytes());
        assert_eq!(r.dropped() + r.len() as u64, 100_000);
        assert_eq!(r.last_seq(), 100_000);
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("keel-capture-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(p: impl AsRef<Path>) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
    }

    #[test]
    fn lines_are_formatted_with_uptime_and_stream() {
        let t = TempDir::new("fmt");
        let path = t.0.join("web.log");
        let mut f = RotatingFile::new(&path, 1 << 20, 3);
        assert!(!path.exists(), "opened lazily");
        f.write_line(Duration::new(12, 3_456_789), Stream::Stdout, "hello")
            .unwrap();
        f.write_line(Duration::from_micros(5), Stream::Stderr, "a\nb")
            .unwrap();
        let want = "12.003456 out hello\n0.000005 err a | b\n";
        assert_eq!(read(&path), want);
        assert_eq!(f.bytes_written(), want.len() as u64);
        // A new writer (keel restarted) appends and keeps counting from the file's size.
        let mut g = RotatingFile::new(&path, 1 << 20, 3);
        g.write_line(Duration::from_secs(1), Stream::Stdout, "again")
            .unwrap();
        assert_eq!(read(&path), format!("{want}1.000000 out again\n"));
        assert_eq!(g.bytes_written(), want.len() as u64 + 19);
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let t = TempDir::new("rot");
        let path = t.0.join("logs/web.log");
        // Each line is 21 bytes: two fit in 50.
        let mut f = RotatingFile::new(&path, 50, 2);
        for i in 0..10 {
            f.write_line(Duration::from_secs(1), Stream::Stdout, &format!("line-{i:02}"))
                .unwrap();
            assert!(f.bytes_written() <= 50);
        }
        let pair = |a: u32, b: u32| format!("1.000000 out line-{a:02}\n1.000000 out line-{b:02}\n");
        assert_eq!(read(&path), pair(8, 9));
        assert_eq!(read(t.0.join("logs/web.log.1")), pair(6, 7));
        assert_eq!(read(t.0.join("logs/web.log.2")), pair(4, 5));
        assert!(!t.0.join("logs/web.log.3").exists());
        assert_eq!(f.bytes_written(), 42);
        assert!(!f.is_failing());
    }

    #[test]
    fn rotation_with_keep_zero_and_overlong_lines() {
        let t = TempDir::new("keep0");
        let path = t.0.join("x.log");
        let mut f = RotatingFile::new(&path, 10, 0);
        f.write_line(Duration::ZERO, Stream::Stdout, "longer than ten bytes")
            .unwrap();
        f.write_line(Duration::ZERO, Stream::Stdout, "second").unwrap();
        assert_eq!(read(&path), "0.000000 out second\n");
        assert!(!t.0.join("x.log.1").exists());
        // An overlong first line goes into the fresh file, not after an empty rotation.
        let path = t.0.join("y.log");
        let mut f = RotatingFile::new(&path, 10, 1);
        f.write_line(Duration::ZERO, Stream::Stdout, "longer than ten bytes")
            .unwrap();
        assert!(!t.0.join("y.log.1").exists());
        f.write_line(Duration::ZERO, Stream::Stdout, "second").unwrap();
        assert_eq!(read(t.0.join("y.log.1")), "0.000000 out longer than ten bytes\n");
        assert_eq!(read(&path), "0.000000 out second\n");
    }

    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).unwrap()
    }

    #[test]
    fn file_and_directory_modes() {
        let t = TempDir::new("mode");
        let path = t.0.join("var/log/web.log");
        let mut f = RotatingFile::new(&path, 1 << 20, 1);
        f.write_line(Duration::ZERO, Stream::Stdout, "x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let mask = umask();
        assert_eq!(mode(&path), 0o640 & !mask);
        assert_eq!(mode(&t.0.join("var/log")), 0o755 & !mask);
        assert_eq!(mode(&t.0.join("var")), 0o755 & !mask);
    }

    #[test]
    fn errors_name_the_path_and_writes_retry() {
        let t = TempDir::new("err");
        let plain = t.0.join("plain");
        std::fs::write(&plain, "not a directory").unwrap();
        let path = plain.join("sub/web.log");
        let mut f = RotatingFile::new(&path, 1 << 20, 1);
        let e = f.write_line(Duration::ZERO, Stream::Stdout, "lost").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CaptureError::CreateDir { .. }), "{e:?}");
        assert!(
            msg.starts_with(&format!(
                "cannot create directory {}: ",
                plain.join("sub").display()
            )),
            "{msg}"
        );
        assert!(f.is_failing());
        assert!(f.write_line(Duration::ZERO, Stream::Stdout, "lost").is_err());
        // The "disk" comes back: the next write opens the file.
        std::fs::remove_file(&plain).unwrap();
        f.write_line(Duration::ZERO, Stream::Stdout, "back").unwrap();
        assert!(!f.is_failing());
        assert_eq!(read(&path), "0.000000 out back\n");
    }

    #[test]
    fn rotation_errors_name_both_paths() {
        let t = TempDir::new("roterr");
        let path = t.0.join("web.log");
        // A directory where the rotated file should go makes rename(2) fail.
        std::fs::create_dir_all(t.0.join("web.log.1/busy")).unwrap();
        let mut f = RotatingFile::new(&path, 30, 1);
        f.write_line(Duration::ZERO, Stream::Stdout, "first line")
            .unwrap();
        let e = f
            .write_line(Duration::ZERO, Stream::Stdout, "second")
            .unwrap_err();
        let want = format!("cannot rotate {} to {}.1: ", path.display(), path.display());
        assert!(e.to_string().starts_with(&want), "{e}");
        assert!(f.is_failing());
        std::fs::remove_dir_all(t.0.join("web.log.1")).unwrap();
        f.write_line(Duration::ZERO, Stream::Stdout, "second").unwrap();
        assert_eq!(read(t.0.join("web.log.1")), "0.000000 out first line\n");
        assert_eq!(read(&path), "0.000000 out second\n");
    }
}
