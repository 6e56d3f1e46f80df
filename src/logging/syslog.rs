//! Forwarding of log lines to a syslog destination: a local datagram socket (`/dev/log`) or
//! a remote receiver over UDP or TCP. The `syslog` crate formats each message (RFC 3164 or
//! RFC 5424); the sockets are ours, because PID 1 must never block on them: they are
//! non-blocking and driven by the event loop, a TCP connect is non-blocking too, and a
//! destination that is down or slow costs PID 1 no more than a bounded queue that drops its
//! oldest messages (and counts them).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ::syslog::{Facility, Formatter3164, Formatter5424, LogFormat, Severity};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr,
};

/// The epoll token of the forwarder's socket.
pub const TOKEN: u64 = 6;
/// Memory the queue may hold while the destination is down or slow.
pub const QUEUE_BYTES: usize = 128 * 1024;
/// Accounted per queued message besides its bytes, so a flood of empty lines is bounded too.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();
/// Delays between attempts to reach a destination that is down: doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// RFC 5424 allows at most 48 characters of APP-NAME.
const APP_NAME_MAX: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog destination {0:?}: expected udp://IP[:PORT], tcp://IP[:PORT] or unix:/PATH")]
    Scheme(String),
    #[error("syslog destination {0:?}: the host must be an IP address (PID 1 does not resolve names: that could block)")]
    Host(String),
    #[error("syslog destination {0:?}: the path must be absolute")]
    Path(String),
    #[error("syslog facility {0:?}: expected kern, user, daemon, auth, syslog, local0 ... local7 or another syslog facility name")]
    Facility(String),
    #[error("syslog format {0:?}: expected rfc3164 or rfc5424")]
    Format(String),
}

/// Where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A local syslog daemon's datagram socket, such as /dev/log.
    Unix(PathBuf),
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl FromStr for Destination {
    type Err = SyslogError;

    fn from_str(s: &str) -> Result<Self, SyslogError> {
        if let Some(path) = s.strip_prefix("unix:") {
            // `unix:/dev/log` and `unix:///dev/log` alike.
            let path = path.trim_start_matches("//");
            return match path.starts_with('/') {
                true => Ok(Destination::Unix(path.into())),
                false => Err(SyslogError::Path(s.into())),
            };
        }
        let (tcp, rest) = match (s.strip_prefix("udp://"), s.strip_prefix("tcp://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(SyslogError::Scheme(s.into())),
        };
        let rest = rest.trim_end_matches('/');
        let addr = match SocketAddr::from_str(rest) {
            Ok(a) => a,
            // No port: the standard one. `[v6]` without a port has its brackets removed.
            Err(_) => match IpAddr::from_str(rest.trim_start_matches('[').trim_end_matches(']')) {
                Ok(ip) => SocketAddr::new(ip, 514),
                Err(_) => return Err(SyslogError::Host(s.into())),
            },
        };
        Ok(if tcp {
            Destination::Tcp(addr)
        } else {
            Destination::Udp(addr)
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Unix(p) => write!(f, "unix:{}", p.display()),
            Destination::Udp(a) => write!(f, "udp://{a}"),
            Destination::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Rfc3164,
    Rfc5424,
}

impl FromStr for Format {
    type Err = SyslogError;

    fn from_str(s: &str) -> Result<Self, SyslogError> {
        match s {
            "rfc3164" | "3164" => Ok(Format::Rfc3164),
            "rfc5424" | "5424" => Ok(Format::Rfc5424),
            _ => Err(SyslogError::Format(s.into())),
        }
    }
}

/// The facility code (0-23); kept as a number so that options compare and copy simply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FacilityCode(pub u8);

/// Facility names by code (ASCII: no Unicode case tables in PID 1 for this).
const FACILITY_NAMES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "audit",
    "alert",
    "clock_daemon",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl FromStr for FacilityCode {
    type Err = SyslogError;

    /// `daemon`, `LOG_DAEMON`, `local0`...
    fn from_str(s: &str) -> Result<Self, SyslogError> {
        let name = match s.get(..4) {
            Some(p) if p.eq_ignore_ascii_case("log_") => s.get(4..).unwrap_or(s),
            _ => s,
        };
        FACILITY_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| FacilityCode(i as u8))
            .ok_or_else(|| SyslogError::Facility(s.into()))
    }
}

impl FacilityCode {
    pub const DAEMON: FacilityCode = FacilityCode(3);

    fn facility(self) -> Facility {
        const ALL: [Facility; 24] = [
            Facility::LOG_KERN,
            Facility::LOG_USER,
            Facility::LOG_MAIL,
            Facility::LOG_DAEMON,
            Facility::LOG_AUTH,
            Facility::LOG_SYSLOG,
            Facility::LOG_LPR,
            Facility::LOG_NEWS,
            Facility::LOG_UUCP,
            Facility::LOG_CRON,
            Facility::LOG_AUTHPRIV,
            Facility::LOG_FTP,
            Facility::LOG_NTP,
            Facility::LOG_AUDIT,
            Facility::LOG_ALERT,
            Facility::LOG_CLOCK_DAEMON,
            Facility::LOG_LOCAL0,
            Facility::LOG_LOCAL1,
            Facility::LOG_LOCAL2,
            Facility::LOG_LOCAL3,
            Facility::LOG_LOCAL4,
            Facility::LOG_LOCAL5,
            Facility::LOG_LOCAL6,
            Facility::LOG_LOCAL7,
        ];
        ALL.get(self.0 as usize).copied().unwrap_or(Facility::LOG_DAEMON)
    }
}

/// `keel.syslog=`, `keel.syslog_facility=`, `keel.syslog_format=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub destination: Destination,
    pub facility: FacilityCode,
    /// None: RFC 3164 for a local socket (what local daemons expect), RFC 5424 over the
    /// network (a full timestamp with year and zone).
    pub format: Option<Format>,
}

impl Config {
    pub fn new(destination: Destination) -> Self {
        Config {
            destination,
            facility: FacilityCode::DAEMON,
            format: None,
        }
    }

    pub fn format(&self) -> Format {
        match (self.format, &self.destination) {
            (Some(f), _) => f,
            (None, Destination::Unix(_)) => Format::Rfc3164,
            (None, _) => Format::Rfc5424,
        }
    }
}

/// A line's severity: what its stream says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Notice,
    Info,
}

impl Level {
    fn severity(self) -> Severity {
        match self {
            Level::Error => Severity::LOG_ERR,
            Level::Warning => Severity::LOG_WARNING,
            Level::Notice => Severity::LOG_NOTICE,
            Level::Info => Severity::LOG_INFO,
        }
    }
}

/// One message to format: who sent it and what.
pub struct Message<'a> {
    /// The APP-NAME (RFC 5424) or TAG (RFC 3164): the unit's name, or `keel`.
    pub app: &'a str,
    pub pid: u32,
    pub level: Level,
    /// RFC 5424 MSGID: the stream the line came from, 1 (stdout) or 2 (stderr).
    pub stream: u32,
    pub text: &'a str,
}

/// The bytes of one message, without framing. `hostname` is left out for a local socket,
/// where the daemon adds its own, as the C library's syslog(3) does.
pub fn format(cfg: &Config, hostname: Option<&str>, m: &Message) -> Vec<u8> {
    // A message is one line on every transport (TCP frames by newline).
    let text = if m.text.contains('\n') {
        std::borrow::Cow::Owned(m.text.replace('\n', " "))
    } else {
        std::borrow::Cow::Borrowed(m.text)
    };
    let app: String = m
        .app
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(APP_NAME_MAX)
        .collect();
    let app = if app.is_empty() { "-".to_string() } else { app };
    let hostname = hostname.map(String::from);
    let facility = cfg.facility.facility();
    let mut buf = Vec::with_capacity(text.len() + 96);
    let written = match cfg.format() {
        Format::Rfc3164 => Formatter3164 {
            facility,
            hostname,
            process: app,
            pid: m.pid,
        }
        .format(&mut buf, m.level.severity(), &*text),
        Format::Rfc5424 => Formatter5424 {
            facility,
            hostname,
            process: app,
            pid: m.pid,
        }
        .format(&mut buf, m.level.severity(), (m.stream, BTreeMap::new(), &*text)),
    };
    // Writing into a Vec cannot fail; an empty message is dropped by the queue.
    if written.is_err() {
        buf.clear();
    }
    buf
}

/// Messages waiting for the destination, bounded by bytes: when full, the oldest go.
#[derive(Debug, Default)]
pub struct Queue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
    budget: usize,
    dropped: u64,
}

impl Queue {
    pub fn new(budget: usize) -> Self {
        Queue {
            budget,
            ..Queue::default()
        }
    }

    /// Add a message, evicting the oldest to stay within the budget (a message larger than
    /// the whole budget is dropped itself).
    pub fn push(&mut self, msg: Vec<u8>) {
        let cost = msg.len() + MESSAGE_OVERHEAD;
        if msg.is_empty() || cost > self.budget {
            self.dropped += 1;
            return;
        }
        while self.bytes + cost > self.budget {
            match self.messages.pop_front() {
                Some(old) => {
                    self.bytes -= old.len() + MESSAGE_OVERHEAD;
                    self.dropped += 1;
                }
                None => break,
            }
        }
        self.bytes += cost;
        self.messages.push_back(msg);
    }

    pub fn front(&self) -> Option<&[u8]> {
        self.messages.front().map(Vec::as_slice)
    }

    pub fn pop(&mut self) {
        if let Some(m) = self.messages.pop_front() {
            self.bytes -= m.len() + MESSAGE_OVERHEAD;
        }
    }

    /// Drop the front message (one the destination refuses for good), counting it.
    pub fn discard(&mut self) {
        if !self.messages.is_empty() {
            self.pop();
            self.dropped += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Accounted bytes; never more than the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No socket; the next attempt is due at this time.
    Down {
        retry: Duration,
    },
    /// A TCP connect is under way.
    Connecting,
    Up,
}

/// The forwarder: a queue, a socket and the state of the link to the destination.
pub struct Forwarder {
    cfg: Config,
    hostname: Option<String>,
    queue: Queue,
    sock: Option<OwnedFd>,
    link: Link,
    /// The epoll interest registered for the socket.
    interest: Option<EpollFlags>,
    /// Bytes of the front message already written on the current TCP connection.
    sent: usize,
    delay: Duration,
    /// The destination is unreachable (said once per outage).
    outage: bool,
    /// Messages dropped and not reported yet.
    lost: u64,
    dropped_total: u64,
    /// How far PID 1's own messages have been forwarded (their ring's sequence number).
    own_seq: u64,
}

impl Forwarder {
    pub fn new(cfg: Config) -> Self {
        let hostname = match cfg.destination {
            Destination::Unix(_) => None,
            _ => nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
        };
        Forwarder {
            cfg,
            hostname,
            queue: Queue::new(QUEUE_BYTES),
            sock: None,
            link: Link::Down {
                retry: Duration::ZERO,
            },
            interest: None,
            sent: 0,
            delay: RETRY_FIRST,
            outage: false,
            lost: 0,
            dropped_total: 0,
            own_seq: 0,
        }
    }

    /// Format and queue a message; it goes out at the next `flush`.
    pub fn push(&mut self, m: &Message) {
        let mut bytes = format(&self.cfg, self.hostname.as_deref(), m);
        // TCP carries a stream: each message ends with a newline (RFC 6587's non-transparent
        // framing, which receivers accept most widely).
        if self.is_tcp() && !bytes.is_empty() {
            bytes.push(b'\n');
        }
        self.queue.push(bytes);
    }

    /// Queue PID 1's own messages logged since the last call.
    fn pull_own(&mut self) {
        // Nothing in here may log: the ring's lock is held.
        let missed = super::with_own(|ring| {
            let (missed, entries) = ring.since(self.own_seq);
            for e in entries {
                self.own_seq = e.seq;
                let (level, text) = super::own_level(&e.text);
                self.push(&Message {
                    app: "keel",
                    pid: 1,
                    level,
                    stream: stream_number(e.stream),
                    text,
                });
            }
            missed
        });
        self.queue.dropped += missed;
    }

    /// When `flush` should run again though nothing happened on the socket: a retry, or
    /// PID 1's own messages logged since the last flush (at once).
    pub fn deadline(&self) -> Option<Duration> {
        let own = super::with_own(|r| r.last_seq()) > self.own_seq;
        match self.link {
            Link::Down { retry } if own || !self.queue.is_empty() => Some(retry),
            Link::Up if own => Some(Duration::ZERO),
            _ => None,
        }
    }

    /// The socket is readable or writable, or has an error: finish a connect, notice a
    /// closed connection or a refusal, then send what can be sent.
    pub fn ready(&mut self, epoll: &Epoll, now: Duration) {
        if let (Some(sock), false) = (self.sock.as_ref(), self.is_tcp()) {
            // A datagram socket wakes us with an error (an ICMP refusal of an earlier
            // datagram): reading it clears it, else epoll would report it again and again.
            match socket::getsockopt(sock, sockopt::SocketError) {
                Ok(0) => {}
                Ok(e) => return self.down(epoll, now, "refused", Errno::from_raw(e)),
                Err(e) => return self.down(epoll, now, "socket error", e),
            }
        }
        if let (Some(sock), true) = (self.sock.as_ref(), self.is_tcp()) {
            match self.link {
                Link::Connecting => match socket::getsockopt(sock, sockopt::SocketError) {
                    Ok(0) => self.link = Link::Up,
                    Ok(e) => return self.down(epoll, now, "cannot connect", Errno::from_raw(e)),
                    Err(e) => return self.down(epoll, now, "cannot connect", e),
                },
                Link::Up => {
                    // A receiver sends nothing: readable means closed (or junk to discard).
                    let mut buf = [0u8; 512];
                    match socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                        Ok(0) => return self.down(epoll, now, "connection closed", Errno::ECONNRESET),
                        Err(e) if e != Errno::EAGAIN => return self.down(epoll, now, "connection lost", e),
                        _ => {}
                    }
                }
                Link::Down { .. } => {}
            }
        }
        self.flush(epoll, now);
    }

    /// Send as much of the queue as the destination takes now, (re)connecting when due.
    pub fn flush(&mut self, epoll: &Epoll, now: Duration) {
        self.pull_own();
        self.count_dropped();
        if self.queue.is_empty() {
            return self.watch(epoll);
        }
        if let Link::Down { retry } = self.link {
            if now < retry {
                return;
            }
            if let Err((what, e)) = self.connect() {
                return self.down(epoll, now, what, e);
            }
        }
        while self.link == Link::Up {
            let Some(msg) = self.queue.front() else { break };
            let Some(sock) = self.sock.as_ref() else { break };
            // A datagram goes whole or not at all; a stream may take part of a message.
            let rest = msg.get(self.sent..).unwrap_or_default();
            let r = socket::send(
                sock.as_raw_fd(),
                rest,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
            match r.map(|n| (n, rest.len())) {
                Ok((n, whole)) if n >= whole || !self.is_tcp() => {
                    self.sent = 0;
                    self.queue.pop();
                    self.delay = RETRY_FIRST;
                    self.recovered();
                }
                Ok((n, _)) => self.sent += n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                // Too big for a datagram: this one can never go.
                Err(Errno::EMSGSIZE) => {
                    self.queue.discard();
                    self.count_dropped();
                }
                Err(e) => return self.down(epoll, now, "cannot send", e),
            }
        }
        self.watch(epoll);
    }

    fn count_dropped(&mut self) {
        let n = self.queue.take_dropped();
        self.lost += n;
        self.dropped_total += n;
    }

    fn is_tcp(&self) -> bool {
        matches!(self.cfg.destination, Destination::Tcp(_))
    }

    /// A fresh socket, connected (UDP, local) or connecting (TCP).
    fn connect(&mut self) -> Result<(), (&'static str, Errno)> {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (family, ty) = match &self.cfg.destination {
            Destination::Unix(_) => (AddressFamily::Unix, SockType::Datagram),
            Destination::Udp(a) | Destination::Tcp(a) => (
                if a.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                },
                if self.is_tcp() {
                    SockType::Stream
                } else {
                    SockType::Datagram
                },
            ),
        };
        let sock = socket::socket(family, ty, flags, None).map_err(|e| ("cannot create a socket", e))?;
        let fd = sock.as_raw_fd();
        let r = match &self.cfg.destination {
            Destination::Unix(p) => UnixAddr::new(p).and_then(|a| socket::connect(fd, &a)),
            Destination::Udp(SocketAddr::V4(a)) | Destination::Tcp(SocketAddr::V4(a)) => {
                socket::connect(fd, &SockaddrIn::from(*a))
            }
            Destination::Udp(SocketAddr::V6(a)) | Destination::Tcp(SocketAddr::V6(a)) => {
                socket::connect(fd, &SockaddrIn6::from(*a))
            }
        };
        self.sent = 0;
        self.interest = None;
        self.link = match r {
            Ok(()) => Link::Up,
            Err(Errno::EINPROGRESS) => Link::Connecting,
            Err(e) => return Err(("cannot connect", e)),
        };
        self.sock = Some(sock);
        Ok(())
    }

    /// The destination cannot be reached: close, say so once, retry later.
    fn down(&mut self, epoll: &Epoll, now: Duration, what: &str, e: Errno) {
        if let Some(s) = self.sock.take() {
            let _ = epoll.delete(s.as_fd());
        }
        self.interest = None;
        self.sent = 0;
        self.link = Link::Down {
            retry: now + self.delay,
        };
        if !self.outage {
            log::info!(
                "syslog {}: {what}: {e}; keeping up to {} KiB of messages and retrying",
                self.cfg.destination,
                QUEUE_BYTES / 1024
            );
        }
        self.outage = true;
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    /// A message went through: end any outage, and say what was dropped meanwhile.
    fn recovered(&mut self) {
        if std::mem::take(&mut self.outage) {
            log::info!(target: super::OK, "syslog {} reached", self.cfg.destination);
        }
        if self.lost > 0 {
            log::warn!(
                "syslog {}: {} messages dropped while it was down or slow",
                self.cfg.destination,
                std::mem::take(&mut self.lost)
            );
        }
    }

    /// Messages dropped since the forwarder started (queue full, or refused for good).
    pub fn dropped(&self) -> u64 {
        self.dropped_total + self.queue.dropped
    }

    /// Ask epoll for what the link waits on: connect completion, room to write, or (TCP)
    /// the peer closing.
    fn watch(&mut self, epoll: &Epoll) {
        let Some(sock) = self.sock.as_ref() else { return };
        let mut want = EpollFlags::empty();
        if self.link == Link::Connecting || !self.queue.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if self.is_tcp() && self.link == Link::Up {
            want |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if self.interest == Some(want) {
            return;
        }
        let mut ev = EpollEvent::new(want, TOKEN);
        let r = match self.interest {
            None => epoll.add(sock.as_fd(), ev),
            Some(_) => epoll.modify(sock.as_fd(), &mut ev),
        };
        if r.is_ok() {
            self.interest = Some(want);
        }
    }
}

/// A stream's number (the RFC 5424 MSGID) and the severity of a container's line on it:
/// stdout is information; stderr is where programs report trouble, a warning.
pub fn stream_number(s: super::capture::Stream) -> u32 {
    match s {
        super::capture::Stream::Stdout => 1,
        super::capture::Stream::Stderr => 2,
    }
}

pub fn stream_level(s: super::capture::Stream) -> Level {
    match s {
        super::capture::Stream::Stdout => Level::Info,
        super::capture::Stream::Stderr => Level::Warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, UdpSocket};
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;

    use nix::sys::epoll::{EpollCreateFlags, EpollTimeout};

    fn msg<'a>(app: &'a str, level: Level, text: &'a str) -> Message<'a> {
        Message {
            app,
            pid: 42,
            level,
            stream: if level == Level::Info { 1 } else { 2 },
            text,
        }
    }

    fn text(cfg: &Config, host: Option<&str>, m: &Message) -> String {
        String::from_utf8(format(cfg, host, m)).unwrap()
    }

    #[test]
    fn messages_carry_the_app_name_facility_and_severity() {
        let mut cfg = Config::new("unix:/dev/log".parse().unwrap());
        let t = text(&cfg, None, &msg("web", Level::Info, "hello"));
        // daemon (3) * 8 + info (6)
        assert!(t.starts_with("<30>"), "{t}");
        assert!(t.ends_with(" web[42]: hello"), "{t}");
        cfg.facility = "local0".parse().unwrap();
        let t = text(&cfg, Some("box"), &msg("web", Level::Warning, "two\nlines"));
        // local0 (16) * 8 + warning (4); one line whatever the text held
        assert!(
            t.starts_with("<132>") && t.ends_with(" box web[42]: two lines"),
            "{t}"
        );
        cfg.format = Some(Format::Rfc5424);
        let t = text(&cfg, Some("box"), &msg("web", Level::Error, "bad"));
        assert!(t.starts_with("<131>1 20"), "{t}");
        assert!(t.ends_with(" box web 42 2 - bad"), "{t}");
        let long = "x".repeat(60) + " y\u{e9}";
        let t = text(&cfg, None, &msg(&long, Level::Notice, "n"));
        assert!(
            t.contains(&format!(" localhost {} 42 2 - n", "x".repeat(48))),
            "{t}"
        );
        assert!(text(&cfg, None, &msg(" ", Level::Info, "n")).contains(" - 42 1 - n"));
    }

    #[test]
    fn facilities_by_name() {
        let code = |s: &str| s.parse::<FacilityCode>().map(|f| f.0).ok();
        assert_eq!(code("daemon"), Some(3));
        assert_eq!(code("LOG_LOCAL3"), Some(19));
        assert_eq!(code("Kern"), Some(0));
        assert_eq!(code("log_clock_daemon"), Some(15));
        assert_eq!(code("local8"), None);
        assert_eq!(code("log_"), None);
        assert_eq!(code("d\u{e9}mon"), None);
        // Each code is the crate's facility with the same name.
        for (i, name) in FACILITY_NAMES.iter().enumerate() {
            let theirs = Facility::from_str(name).map(|f| f as u8 >> 3);
            assert_eq!(theirs, Ok(i as u8), "{name}");
            assert_eq!(FacilityCode(i as u8).facility() as u8 >> 3, i as u8);
        }
    }

    #[test]
    fn pid1s_own_tags_become_severities() {
        assert_eq!(crate::logging::own_level("[FAILED] x"), (Level::Error, "x"));
        assert_eq!(crate::logging::own_level("[ WARN ] x"), (Level::Warning, "x"));
        assert_eq!(crate::logging::own_level("[  OK  ] x"), (Level::Notice, "x"));
        assert_eq!(crate::logging::own_level("x"), (Level::Info, "x"));
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest() {
        let mut q = Queue::new(1000);
        for i in 0..100u8 {
            q.push(vec![i; 50]);
        }
        assert!(q.bytes() <= 1000);
        let kept = q.len();
        assert_eq!(kept, 1000 / (50 + MESSAGE_OVERHEAD));
        assert_eq!(q.take_dropped(), 100 - kept as u64);
        assert_eq!(q.take_dropped(), 0, "counted once");
        assert_eq!(q.front().unwrap()[0], 100 - kept as u8, "the newest are kept");
        q.push(vec![1; 2000]);
        q.push(Vec::new());
        assert_eq!(
            (q.len(), q.take_dropped()),
            (kept, 2),
            "too big or empty: dropped"
        );
        q.discard();
        assert_eq!((q.len(), q.take_dropped()), (kept - 1, 1));
        while !q.is_empty() {
            q.pop();
        }
        assert_eq!(q.bytes(), 0);
    }

    struct Rig {
        epoll: Epoll,
        start: Instant,
    }

    impl Rig {
        fn new() -> Self {
            Rig {
                epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap(),
                start: Instant::now(),
            }
        }

        fn now(&self) -> Duration {
            self.start.elapsed()
        }

        /// Run the forwarder as the event loop would, for `d`.
        fn run(&self, f: &mut Forwarder, d: Duration) {
            let end = self.now() + d;
            while self.now() < end {
                f.flush(&self.epoll, self.now());
                let mut ev = [EpollEvent::empty(); 4];
                let n = self.epoll.wait(&mut ev, EpollTimeout::from(10u8)).unwrap_or(0);
                if n > 0 {
                    f.ready(&self.epoll, self.now());
                }
            }
        }
    }

    fn free_udp_port() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    #[test]
    fn udp_datagrams_arrive_and_a_refused_destination_keeps_them_for_later() {
        let rig = Rig::new();
        let addr = free_udp_port();
        let mut f = Forwarder::new(Config::new(Destination::Udp(addr)));
        // Nobody listens: the kernel's port-unreachable turns the next send into an error.
        f.push(&msg("svc", Level::Info, "lost to nobody"));
        rig.run(&mut f, Duration::from_millis(50));
        f.push(&msg("svc", Level::Info, "kept"));
        f.push(&msg("svc", Level::Warning, "kept too"));
        rig.run(&mut f, Duration::from_millis(50));
        assert_eq!(f.queue.len(), 2, "refused messages stay queued");
        assert!(matches!(f.link, Link::Down { .. }) && f.deadline().is_some());
        let listener = UdpSocket::bind(addr).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rig.run(&mut f, Duration::from_millis(600));
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 2 {
            let n = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            got[0].starts_with("<30>1 ") && got[0].ends_with(" svc 42 1 - kept"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("<28>1 ") && got[1].ends_with(" svc 42 2 - kept too"),
            "{got:?}"
        );
        assert_eq!(f.link, Link::Up);
        assert_eq!(f.deadline(), None);
    }

    #[test]
    fn a_refusal_with_nothing_to_send_does_not_keep_waking_the_loop() {
        let rig = Rig::new();
        let mut f = Forwarder::new(Config::new(Destination::Udp(free_udp_port())));
        f.push(&msg("svc", Level::Info, "to nobody"));
        f.flush(&rig.epoll, rig.now());
        assert_eq!(
            (f.link, f.queue.len()),
            (Link::Up, 0),
            "sent, as far as UDP knows"
        );
        // The refusal arrives as a socket error: one wake-up, then quiet.
        let mut wakeups = 0;
        for _ in 0..20 {
            let mut ev = [EpollEvent::empty(); 4];
            if rig.epoll.wait(&mut ev, EpollTimeout::from(10u8)).unwrap_or(0) > 0 {
                wakeups += 1;
                f.ready(&rig.epoll, rig.now());
            }
        }
        assert!(wakeups <= 2, "{wakeups} wake-ups for one refusal");
        assert!(matches!(f.link, Link::Down { .. }));
        assert_eq!(f.deadline(), None, "nothing queued: no retry timer either");
    }

    #[test]
    fn tcp_frames_by_newline_and_reconnects_after_the_peer_closes() {
        let rig = Rig::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut f = Forwarder::new(Config::new(Destination::Tcp(addr)));
        f.push(&msg("a", Level::Info, "one"));
        f.push(&msg("a", Level::Info, "two"));
        rig.run(&mut f, Duration::from_millis(100));
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut lines = BufReader::new(conn).lines();
        assert!(lines.next().unwrap().unwrap().ends_with(" a 42 1 - one"));
        assert!(lines.next().unwrap().unwrap().ends_with(" a 42 1 - two"));
        // The receiver goes away: noticed without anything to send, then a reconnect.
        drop(lines);
        rig.run(&mut f, Duration::from_millis(100));
        assert!(matches!(f.link, Link::Down { .. }), "{:?}", f.link);
        f.push(&msg("a", Level::Info, "three"));
        rig.run(&mut f, Duration::from_millis(700));
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = BufReader::new(conn).lines().next().unwrap().unwrap();
        assert!(line.ends_with(" a 42 1 - three"), "{line}");
    }

    #[test]
    fn a_tcp_destination_that_never_answers_costs_no_more_than_the_queue() {
        let rig = Rig::new();
        // A listener that never accepts: the connection completes in the kernel's backlog,
        // then its buffers fill; PID 1 must go on, with the queue bounded.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut f = Forwarder::new(Config::new(Destination::Tcp(listener.local_addr().unwrap())));
        let line = "z".repeat(1000);
        let start = Instant::now();
        for _ in 0..20 {
            for _ in 0..1000 {
                f.push(&msg("flood", Level::Info, &line));
            }
            rig.run(&mut f, Duration::from_millis(5));
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the forwarder blocked");
        assert!(f.queue.bytes() <= QUEUE_BYTES);
        assert!(f.dropped() > 0, "20 MB cannot all have fitted");
    }

    #[test]
    fn a_local_socket_gets_rfc3164_without_a_hostname() {
        let rig = Rig::new();
        let dir = std::env::temp_dir().join(format!("keel-syslog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let mut f = Forwarder::new(Config::new(Destination::Unix(path.clone())));
        f.push(&msg("early", Level::Info, "before the daemon"));
        rig.run(&mut f, Duration::from_millis(30));
        assert!(matches!(f.link, Link::Down { .. }), "no socket yet");
        let daemon = UnixDatagram::bind(&path).unwrap();
        daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rig.run(&mut f, Duration::from_millis(600));
        let mut buf = [0u8; 1024];
        let n = daemon.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(
            got.starts_with("<30>") && got.ends_with(" early[42]: before the daemon"),
            "{got}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
