//! The control socket in PID 1. Root with CAP_SYS_BOOT only (file mode, peer credentials
//! and the peer's capabilities), every client
//! non-blocking with bounded buffers: a malformed request gets an error, an oversized one
//! too, a client that stalls mid-request or does not read its answers is dropped, and
//! there are never more than MAX_CLIENTS. Nothing a client does can block PID 1.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::ctl::{encode, Data, LogLine, Request, RequestReader, Response};

pub const TOKEN_LISTEN: u64 = 4;
/// Plus the client's slot.
pub const TOKEN_CLIENT: u64 = 3 << 32;
pub const MAX_CLIENTS: usize = 32;
/// Answers waiting for a client that does not read them; past this it is dropped.
const MAX_PENDING: usize = 1 << 20;
/// A request must be complete within this long of its first byte.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Per wake-up, so one client cannot monopolise PID 1.
const READ_BUDGET: usize = 64 * 1024;

struct Client {
    stream: UnixStream,
    reader: RequestReader,
    out: Vec<u8>,
    /// `logs -f`: the unit and the last sequence number sent.
    follow: Option<(usize, u64)>,
    /// When the partial request now buffered started.
    partial_since: Option<Duration>,
    /// The client has sent all it will (EOF): it only waits for its answers now.
    eof: bool,
    /// The epoll interest set now registered.
    watching: EpollFlags,
}

pub struct Control {
    listener: UnixListener,
    clients: Vec<Option<Client>>,
}

/// What the driver does for a request.
pub enum Answer {
    Reply(Response),
    /// Reply, then keep sending the unit's new log lines after `seq`.
    Follow(Response, usize, u64),
}

const CAP_SYS_BOOT: u32 = 22;

/// Does the peer hold CAP_SYS_BOOT? Stopping services and powering off is what that
/// capability names; a container that binds the socket but was not granted it is refused.
/// PID 0 is a peer outside our PID namespace (development mode's host): an ancestor.
fn may_control(pid: i32) -> bool {
    if pid == 0 {
        return true;
    }
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_BOOT) != 0)
}

impl Control {
    pub fn open(path: &Path, epoll: &Epoll) -> Result<Control, String> {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = fs::remove_file(path);
        let fail =
            |what: &str, e: &dyn std::fmt::Display| format!("control socket {}: {what}: {e}", path.display());
        let listener = UnixListener::bind(path).map_err(|e| fail("cannot bind", &e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| fail("cannot chmod", &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot make non-blocking", &e))?;
        epoll
            .add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTEN),
            )
            .map_err(|e| fail("cannot watch", &e))?;
        Ok(Control {
            listener,
            clients: Vec::new(),
        })
    }

    /// New clients; `answer` serves the requests of those already here when all slots are
    /// taken (see free_slot).
    pub fn accept(&mut self, epoll: &Epoll, now: Duration, answer: &mut dyn FnMut(Request) -> Answer) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let refuse = |mut s: UnixStream, why: &str| {
                let _ = s.set_nonblocking(true);
                let _ = s.write(&encode(&Response::Err(why.into())));
            };
            // The socket is 0600 already; a caller that got a descriptor some other way
            // must still be root, and hold the power the requests amount to.
            match getsockopt(&stream, PeerCredentials) {
                Ok(c) if c.uid() == 0 && may_control(c.pid()) => {}
                _ => {
                    refuse(
                        stream,
                        "permission denied: the control socket is for root with CAP_SYS_BOOT",
                    );
                    continue;
                }
            }
            let Some(slot) = self.free_slot(epoll, now, answer) else {
                refuse(stream, "too many control clients; try again");
                continue;
            };
            if stream.set_nonblocking(true).is_err()
                || epoll
                    .add(
                        stream.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CLIENT + slot as u64),
                    )
                    .is_err()
            {
                continue;
            }
            self.clients[slot] = Some(Client {
                stream,
                reader: RequestReader::new(),
                out: Vec::new(),
                follow: None,
                partial_since: None,
                eof: false,
                watching: EpollFlags::EPOLLIN,
            });
        }
    }

    /// A free client slot. When all are taken, every client is serviced first: the
    /// hang-ups of some may still wait behind the listener's event.
    fn free_slot(
        &mut self,
        epoll: &Epoll,
        now: Duration,
        answer: &mut dyn FnMut(Request) -> Answer,
    ) -> Option<usize> {
        if let Some(i) = self.clients.iter().position(Option::is_none) {
            return Some(i);
        }
        if self.clients.len() < MAX_CLIENTS {
            self.clients.push(None);
            return Some(self.clients.len() - 1);
        }
        for slot in 0..self.clients.len() {
            self.service(epoll, slot, now, answer);
        }
        self.clients.iter().position(Option::is_none)
    }

    /// A client's socket is readable or writable: read its requests (answered through
    /// `answer`), then send what is pending.
    pub fn service(
        &mut self,
        epoll: &Epoll,
        slot: usize,
        now: Duration,
        answer: &mut dyn FnMut(Request) -> Answer,
    ) {
        let Some(Some(c)) = self.clients.get_mut(slot) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut total = 0;
        let mut closed = false;
        let mut overrun = false;
        // Stop reading once the answers pile up: their size, not the requests', is what a
        // client that asks without reading could make PID 1 hold.
        while total < READ_BUDGET && !c.eof && c.out.len() <= MAX_PENDING {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    for r in c.reader.feed(&buf[..n]) {
                        if c.out.len() > MAX_PENDING {
                            overrun = true;
                            break;
                        }
                        let resp = match r {
                            Ok(req) => match answer(req) {
                                Answer::Reply(resp) => resp,
                                Answer::Follow(resp, unit, seq) => {
                                    c.follow = Some((unit, seq));
                                    resp
                                }
                            },
                            Err(e) => Response::from(e),
                        };
                        c.out.extend_from_slice(&encode(&resp));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        c.partial_since = match (c.reader.buffered(), c.partial_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(now),
        };
        if overrun {
            log::debug!("control client {slot} asks faster than it reads; dropped");
            self.drop_client(epoll, slot);
            return;
        }
        // A client that sent its requests and shut its end still gets the answers.
        c.eof |= closed;
        self.flush(epoll, slot);
    }

    /// Send pending bytes; drop a client that lets too much pile up.
    fn flush(&mut self, epoll: &Epoll, slot: usize) {
        let Some(Some(c)) = self.clients.get_mut(slot) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_client(epoll, slot);
                    return;
                }
            }
        }
        if c.out.len() > MAX_PENDING {
            log::debug!("control client {slot} does not read its answers; dropped");
            self.drop_client(epoll, slot);
            return;
        }
        if c.eof && c.out.is_empty() {
            self.drop_client(epoll, slot);
            return;
        }
        // At EOF a socket is always readable: watch it for writing only.
        let mut want = if c.eof {
            EpollFlags::empty()
        } else {
            EpollFlags::EPOLLIN
        };
        if !c.out.is_empty() {
            want |= EpollFlags::EPOLLOUT;
        }
        if want != c.watching {
            let mut ev = EpollEvent::new(want, TOKEN_CLIENT + slot as u64);
            let _ = epoll.modify(c.stream.as_fd(), &mut ev);
            c.watching = want;
        }
    }

    fn drop_client(&mut self, epoll: &Epoll, slot: usize) {
        if let Some(c) = self.clients.get_mut(slot).and_then(Option::take) {
            let _ = epoll.delete(c.stream.as_fd());
        }
    }

    /// Followers get the new lines of their unit; `lines(unit, after)` returns the next
    /// batch and the sequence number it ends at. A follower still sending its last batch
    /// gets none: one that stops reading holds a batch in PID 1, not the whole flood (and
    /// misses what the ring drops meanwhile).
    pub fn feed_followers(&mut self, epoll: &Epoll, lines: &dyn Fn(usize, u64) -> (Vec<LogLine>, u64)) {
        for slot in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get_mut(slot) else {
                continue;
            };
            let Some((unit, seq)) = c.follow else { continue };
            if !c.out.is_empty() {
                continue;
            }
            let (new, last) = lines(unit, seq);
            if new.is_empty() {
                continue;
            }
            c.follow = Some((unit, last));
            c.out.extend_from_slice(&encode(&Response::Ok(Data::Logs(new))));
            self.flush(epoll, slot);
        }
    }

    /// Drop clients whose request has been incomplete for too long; returns when the next
    /// such check is due.
    pub fn expire(&mut self, epoll: &Epoll, now: Duration) -> Option<Duration> {
        let mut next = None::<Duration>;
        for slot in 0..self.clients.len() {
            let Some(Some(c)) = self.clients.get(slot) else {
                continue;
            };
            if let Some(t) = c.partial_since {
                if now >= t + REQUEST_LIMIT {
                    log::debug!("control client {slot}: request incomplete after {REQUEST_LIMIT:?}; dropped");
                    self.drop_client(epoll, slot);
                } else {
                    let due = t + REQUEST_LIMIT;
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        next
    }
}
