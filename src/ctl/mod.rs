//! The control protocol between PID 1 and `keel ctl`, and the client side.
//!
//! Transport: a Unix stream socket at [`SOCKET`]. A request is one JSON object on one line;
//! each response is one JSON object on one line (`logs --follow` gets a stream of them until
//! the client hangs up). Line-delimited JSON keeps it scriptable with `socat` and lets the
//! server decode with a bounded buffer ([`RequestReader`]) inside its non-blocking loop.

mod client;
mod format;

use serde::{Deserialize, Serialize};

pub use client::{exchange, parse_args, run, run_at, ClientError, Options, USAGE};
pub use format::{format_boot, format_data, format_logs, format_services, format_status};

/// Where PID 1 listens. Under /run so it is gone after a reboot.
pub const SOCKET: &str = "/run/keel/ctl.sock";

/// Longest request line (without its newline) the server buffers; requests are tiny, so
/// anything longer is abuse or a bug and must not grow PID 1's memory.
pub const MAX_REQUEST: usize = 4096;

/// Longest response line the client accepts: a generous bound on `logs` batches that still
/// keeps a confused server from filling the client's memory.
pub const MAX_RESPONSE: usize = 16 << 20;

/// Decoded strictly by `request_from_json` (a typo such as `"nmae"` is an error, not a
/// silently different request). Decoding through `serde_json::Value`, which PID 1 links
/// anyway, keeps a derived deserializer out of the device binary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    List,
    Status {
        name: String,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// `lines`: only the last N buffered lines (all when absent). `follow`: keep the
    /// connection open and stream new lines as they arrive.
    Logs {
        name: String,
        /// Optional on the wire (false).
        follow: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        lines: Option<u32>,
    },
    /// Timing of the boot: each unit's start offset, duration and result.
    Boot,
    Poweroff,
    Reboot,
    Halt,
}

const COMMANDS: &str = "list, status, start, stop, restart, logs, boot, poweroff, reboot, halt";

/// One request object: `cmd`, the fields that command takes, nothing else.
fn request_from_json(v: serde_json::Value) -> Result<Request, String> {
    use serde_json::Value;
    let Value::Object(mut m) = v else {
        return Err("a request must be a JSON object".into());
    };
    let cmd = match m.remove("cmd") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("`cmd` must be a string".into()),
        None => return Err("missing field `cmd`".into()),
    };
    // Unknown fields first: a typo'd `name` should be named as such, not as missing.
    let allowed: &[&str] = match cmd.as_str() {
        "status" | "start" | "stop" | "restart" => &["name"],
        "logs" => &["name", "follow", "lines"],
        _ => &[],
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        if COMMANDS.split(", ").any(|c| c == cmd) {
            return Err(format!("unknown field `{k}` for `{cmd}`"));
        }
    }
    let mut name = || match m.remove("name") {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err("`name` must be a string".to_string()),
        None => Err("missing field `name`".to_string()),
    };
    let req = match cmd.as_str() {
        "list" => Request::List,
        "boot" => Request::Boot,
        "poweroff" => Request::Poweroff,
        "reboot" => Request::Reboot,
        "halt" => Request::Halt,
        "status" => Request::Status { name: name()? },
        "start" => Request::Start { name: name()? },
        "stop" => Request::Stop { name: name()? },
        "restart" => Request::Restart { name: name()? },
        "logs" => {
            let name = name()?;
            let follow = match m.remove("follow") {
                None => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err("`follow` must be true or false".into()),
            };
            let lines = match m.remove("lines") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or("`lines` must be a whole number up to 4294967295")?,
                ),
                Some(_) => return Err("`lines` must be a number".into()),
            };
            Request::Logs { name, follow, lines }
        }
        other => return Err(format!("unknown variant `{other}`, expected one of {COMMANDS}")),
    };
    Ok(req)
}

/// On the wire `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`, so a script can test
/// `.ok` without knowing the command it sent.
#[allow(clippy::large_enum_variant)] // see Data
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
pub enum Response {
    Ok(Data),
    Err(String),
}

/// Externally tagged (`{"services":[...]}`) rather than untagged: an empty list would
/// otherwise be ambiguous between services, logs and boot events.
///
/// `Service` is unboxed although large: a response lives only while it is encoded or
/// printed, so the size does not matter and the API stays plain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Data {
    Services(Vec<ServiceInfo>),
    Service(ServiceInfo),
    Logs(Vec<LogLine>),
    Boot(Vec<BootEvent>),
    /// What the server did or started doing, e.g. "stopping web".
    Done(String),
}

/// One unit as the supervisor sees it. Kind and state are strings so that a newer server
/// can add states without breaking older clients; unknown fields are ignored for the same
/// reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// "onboot", "service" or "onshutdown".
    pub kind: String,
    /// E.g. "running", "ready", "backoff", "failed", "stopped", "exited".
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_ms: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    /// E.g. "exit code 1" or "signal SIGKILL".
    pub last_exit: Option<String>,
    #[serde(default)]
    pub ready: bool,
    pub health: Option<String>,
    /// Free text from sd_notify `STATUS=`.
    pub status: Option<String>,
    /// Why the unit failed or is waiting.
    pub reason: Option<String>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// One line of a container's captured output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Increases by one per captured line, so a client can tell when lines were dropped.
    pub seq: u64,
    /// Milliseconds since boot (CLOCK_BOOTTIME), like PID 1's own console log.
    pub ts_ms: u64,
    /// "out" or "err".
    pub stream: String,
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEvent {
    pub name: String,
    pub kind: String,
    /// Milliseconds since boot when the unit was started.
    pub start_ms: u64,
    /// None while it is still running (or, for services, until ready).
    pub duration_ms: Option<u64>,
    pub result: String,
}

/// The wire shape of [`Response`]; `deny_unknown_fields` is deliberately absent.
#[derive(Serialize, Deserialize)]
struct Wire {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for Wire {
    fn from(r: Response) -> Wire {
        match r {
            Response::Ok(d) => Wire {
                ok: true,
                data: Some(d),
                error: None,
            },
            Response::Err(e) => Wire {
                ok: false,
                data: None,
                error: Some(e),
            },
        }
    }
}

impl TryFrom<Wire> for Response {
    type Error = String;
    fn try_from(w: Wire) -> Result<Response, String> {
        match w {
            Wire {
                ok: true,
                data: Some(d),
                ..
            } => Ok(Response::Ok(d)),
            Wire { ok: true, .. } => Err("response has ok:true but no data".into()),
            Wire { ok: false, error, .. } => {
                Ok(Response::Err(error.unwrap_or_else(|| "unspecified error".into())))
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("invalid request: {0}")]
    Malformed(String),
}

impl From<ProtocolError> for Response {
    fn from(e: ProtocolError) -> Response {
        Response::Err(e.to_string())
    }
}

/// Splits the byte stream of one client connection into requests.
///
/// A line longer than [`MAX_REQUEST`] yields one `TooLong` as soon as the limit is crossed;
/// the rest of that line is then discarded up to its newline, so the connection recovers and
/// the server may answer the error and carry on (or close it: both are safe). The buffer never
/// holds more than `MAX_REQUEST` bytes, whatever the client sends. Blank lines are ignored.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    discarding: bool,
}

impl RequestReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed what one `read` returned; returns the outcome for each line it completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Request, ProtocolError>> {
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (piece, complete) = match chunk.strip_suffix(b"\n") {
                Some(p) => (p, true),
                None => (chunk, false),
            };
            if !self.discarding {
                if self.buf.len() + piece.len() > MAX_REQUEST {
                    out.push(Err(ProtocolError::TooLong));
                    self.buf = Vec::new();
                    self.discarding = true;
                } else {
                    self.buf.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.discarding {
                    if let Some(r) = decode(&self.buf) {
                        out.push(r);
                    }
                }
                self.buf.clear();
                self.discarding = false;
            }
        }
        out
    }
}

/// One complete line; None for a blank one.
fn decode(line: &[u8]) -> Option<Result<Request, ProtocolError>> {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            let m = format!("not valid UTF-8 (at byte {})", e.valid_up_to());
            return Some(Err(ProtocolError::Malformed(m)));
        }
    };
    if text.trim().is_empty() {
        return None;
    }
    let parsed = serde_json::from_str(text)
        .map_err(|e| e.to_string())
        .and_then(request_from_json)
        .map_err(ProtocolError::Malformed);
    Some(parsed)
}

/// One response line: JSON and a newline.
pub fn encode(resp: &Response) -> Vec<u8> {
    encode_line(resp)
}

/// One request line, for the client.
pub fn encode_request(req: &Request) -> Vec<u8> {
    encode_line(req)
}

fn encode_line<T: Serialize>(v: &T) -> Vec<u8> {
    // Cannot fail for these types (no maps with non-string keys); still never panic in PID 1.
    let mut out = serde_json::to_vec(v)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error: cannot encode response"}"#.to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            kind: "service".into(),
            state: "running".into(),
            pid: Some(42),
            uptime_ms: Some(192_000),
            restarts: 2,
            last_exit: Some("exit code 1".into()),
            ready: true,
            health: Some("healthy".into()),
            status: Some("serving".into()),
            reason: None,
            memory_bytes: Some(1 << 20),
            pids: Some(3),
        }
    }

    fn all_requests() -> Vec<Request> {
        let n = || "web".to_string();
        vec![
            Request::List,
            Request::Status { name: n() },
            Request::Start { name: n() },
            Request::Stop { name: n() },
            Request::Restart { name: n() },
            Request::Logs {
                name: n(),
                follow: true,
                lines: Some(10),
            },
            Request::Logs {
                name: n(),
                follow: false,
                lines: None,
            },
            Request::Boot,
            Request::Poweroff,
            Request::Reboot,
            Request::Halt,
        ]
    }

    fn all_responses() -> Vec<Response> {
        let line = LogLine {
            seq: 7,
            ts_ms: 1234,
            stream: "err".into(),
            text: "boom".into(),
        };
        let ev = BootEvent {
            name: "net".into(),
            kind: "onboot".into(),
            start_ms: 10,
            duration_ms: Some(250),
            result: "exit code 0".into(),
        };
        vec![
            Response::Ok(Data::Services(vec![info("a"), ServiceInfo::default()])),
            Response::Ok(Data::Services(vec![])),
            Response::Ok(Data::Service(info("web"))),
            Response::Ok(Data::Logs(vec![line])),
            Response::Ok(Data::Logs(vec![])),
            Response::Ok(Data::Boot(vec![ev])),
            Response::Ok(Data::Done("stopping web".into())),
            Response::Err("no such service: x".into()),
        ]
    }

    #[test]
    fn requests_round_trip_through_the_reader() {
        for req in all_requests() {
            let line = encode_request(&req);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(RequestReader::new().feed(&line), vec![Ok(req)]);
        }
    }

    #[test]
    fn responses_round_trip() {
        for resp in all_responses() {
            let line = encode(&resp);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let back: Response = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, resp);
        }
    }

    #[test]
    fn exact_wire_shapes() {
        let req = Request::Status { name: "web".into() };
        assert_eq!(encode_request(&req), b"{\"cmd\":\"status\",\"name\":\"web\"}\n");
        assert_eq!(encode_request(&Request::List), b"{\"cmd\":\"list\"}\n");
        let logs = Request::Logs {
            name: "web".into(),
            follow: true,
            lines: Some(5),
        };
        assert_eq!(
            serde_json::to_string(&logs).unwrap(),
            r#"{"cmd":"logs","name":"web","follow":true,"lines":5}"#
        );
        let err = Response::Err("no such service: x".into());
        assert_eq!(encode(&err), b"{\"ok\":false,\"error\":\"no such service: x\"}\n");
        let done = Response::Ok(Data::Done("stopping web".into()));
        assert_eq!(
            encode(&done),
            b"{\"ok\":true,\"data\":{\"done\":\"stopping web\"}}\n"
        );
    }

    #[test]
    fn logs_defaults_and_lenient_responses() {
        let r = RequestReader::new().feed(b"{\"cmd\":\"logs\",\"name\":\"web\"}\n");
        let want = Request::Logs {
            name: "web".into(),
            follow: false,
            lines: None,
        };
        assert_eq!(r, vec![Ok(want)]);
        // Newer servers may add fields; old clients must still read the response.
        let r: Response = serde_json::from_str(r#"{"ok":false,"error":"x","extra":1}"#).unwrap();
        assert_eq!(r, Response::Err("x".into()));
        assert!(serde_json::from_str::<Response>(r#"{"ok":true}"#).is_err());
    }

    #[test]
    fn split_and_multiple_requests() {
        let mut r = RequestReader::new();
        assert_eq!(r.feed(b"{\"cmd\":\"sta"), vec![]);
        assert_eq!(r.feed(b"tus\",\"name\""), vec![]);
        let got = r.feed(b":\"web\"}\n{\"cmd\":\"list\"}\r\n\n  \n{\"cmd\":\"bo");
        let want = vec![Ok(Request::Status { name: "web".into() }), Ok(Request::List)];
        assert_eq!(got, want);
        assert_eq!(r.feed(b"ot\"}\n"), vec![Ok(Request::Boot)]);
        assert_eq!(r.buffered(), 0);
    }

    fn malformed(line: &[u8]) -> String {
        match RequestReader::new().feed(line).as_slice() {
            [Err(ProtocolError::Malformed(m))] => m.clone(),
            other => panic!("expected one Malformed for {line:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        assert!(malformed(b"{\"cmd\":\"explode\"}\n").contains("unknown variant `explode`"));
        assert!(malformed(b"{\"cmd\":\"status\",\"nmae\":\"w\"}\n").contains("unknown field `nmae`"));
        assert!(malformed(b"{\"cmd\":\"list\",\"x\":1}\n").contains("unknown field `x`"));
        assert!(malformed(b"{\"cmd\":\"stop\"}\n").contains("missing field `name`"));
        assert!(malformed(b"{\"name\":\"web\"}\n").contains("missing field `cmd`"));
        assert!(malformed(b"{\"cmd\":\"list\"\n").contains("column"));
        assert!(malformed(b"list\n").contains("column"));
        assert_eq!(malformed(b"{\"cmd\":\"\xff\"}\n"), "not valid UTF-8 (at byte 8)");
        let e = ProtocolError::Malformed("x".into());
        assert_eq!(Response::from(e), Response::Err("invalid request: x".into()));
    }

    #[test]
    fn errors_do_not_poison_the_connection() {
        let mut r = RequestReader::new();
        let got = r.feed(b"nope\n{\"cmd\":\"halt\"}\n");
        assert!(matches!(
            got.as_slice(),
            [Err(ProtocolError::Malformed(_)), Ok(Request::Halt)]
        ));
    }

    #[test]
    fn oversized_line_is_rejected_once_then_recovers() {
        let mut r = RequestReader::new();
        let mut big = vec![b' '; MAX_REQUEST + 1];
        big.extend_from_slice(b"\n{\"cmd\":\"list\"}\n");
        assert_eq!(r.feed(&big), vec![Err(ProtocolError::TooLong), Ok(Request::List)]);
        // Exactly MAX_REQUEST bytes is still accepted.
        let mut exact = br#"{"cmd":"list"}"#.to_vec();
        exact.resize(MAX_REQUEST, b' ');
        exact.push(b'\n');
        assert_eq!(r.feed(&exact), vec![Ok(Request::List)]);
        // Crossing the limit across reads.
        assert_eq!(r.feed(&[b' '; MAX_REQUEST]), vec![]);
        assert_eq!(r.feed(b"  "), vec![Err(ProtocolError::TooLong)]);
        assert_eq!(
            r.feed(b"more junk\n{\"cmd\":\"boot\"}\n"),
            vec![Ok(Request::Boot)]
        );
    }

    #[test]
    fn buffer_stays_bounded_under_a_flood() {
        let mut r = RequestReader::new();
        let chunk = [b'x'; 1000];
        let mut errors = 0;
        for _ in 0..10_000 {
            errors += r.feed(&chunk).len();
            assert!(r.buffered() <= MAX_REQUEST);
        }
        assert_eq!(errors, 1);
        assert_eq!(r.feed(b"\n{\"cmd\":\"reboot\"}\n"), vec![Ok(Request::Reboot)]);
    }
}
