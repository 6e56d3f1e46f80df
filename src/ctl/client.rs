//! `keel ctl`: parse argv, send one request to PID 1, print the answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::errno::Errno;

use super::{encode_request, format_data, Request, Response, MAX_RESPONSE, SOCKET};

pub const USAGE: &str = "usage: keel ctl COMMAND [--json]
  list                      all units and their state
  status NAME               one unit in detail
  start|stop|restart NAME   control a service
  logs NAME [-f|--follow] [-n|--lines N]
                            a unit's captured output; -f keeps streaming new lines
  boot                      when each unit started and how long it took
  poweroff|reboot|halt      shut the machine down
  --json                    print the server's JSON response lines as received";

/// PID 1 answers from its event loop; if it has not answered in this long it is stuck, and
/// hanging the operator's shell would only hide that.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Print the response lines verbatim instead of formatting them.
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {errno}{}", connect_hint(*.errno))]
    Connect { path: String, errno: Errno },
    #[error("connection to keel failed: {0}")]
    Io(#[from] io::Error),
    #[error("no response from keel within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("keel closed the connection without a complete response")]
    Closed,
    #[error("invalid response from keel: {0}")]
    BadResponse(String),
}

fn connect_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT | Errno::ECONNREFUSED => " (is keel running as PID 1?)",
        Errno::EACCES | Errno::EPERM => " (permission denied: run as root)",
        _ => "",
    }
}

/// Parses the arguments after `ctl`. Options may come anywhere; the error text includes the
/// usage.
pub fn parse_args(args: &[String]) -> Result<(Request, Options), String> {
    let fail = |msg: String| Err(format!("keel ctl: {msg}\n{USAGE}"));
    let mut opts = Options::default();
    let (mut follow, mut lines) = (false, None);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => opts.json = true,
            "-f" | "--follow" => follow = true,
            "-n" | "--lines" => match it.next().map(|v| (v, v.parse::<u32>())) {
                Some((_, Ok(n))) => lines = Some(n),
                Some((v, Err(_))) => return fail(format!("{a} wants a number of lines, not {v:?}")),
                None => return fail(format!("{a} wants a number of lines")),
            },
            s if s.starts_with('-') => return fail(format!("unknown option {s:?}")),
            s => words.push(s),
        }
    }
    let name = |n: &&str| n.to_string();
    let req = match words.as_slice() {
        [] => return fail("no command given".into()),
        ["list"] => Request::List,
        ["boot"] => Request::Boot,
        ["poweroff"] => Request::Poweroff,
        ["reboot"] => Request::Reboot,
        ["halt"] => Request::Halt,
        ["status", n] => Request::Status { name: name(n) },
        ["start", n] => Request::Start { name: name(n) },
        ["stop", n] => Request::Stop { name: name(n) },
        ["restart", n] => Request::Restart { name: name(n) },
        ["logs", n] => Request::Logs {
            name: name(n),
            follow,
            lines,
        },
        [c @ ("status" | "start" | "stop" | "restart" | "logs")] => {
            return fail(format!("{c} needs a unit NAME"))
        }
        [c @ ("list" | "boot" | "poweroff" | "reboot" | "halt"), extra, ..]
        | [c @ ("status" | "start" | "stop" | "restart" | "logs"), _, extra, ..] => {
            return fail(format!("{c}: unexpected argument {extra:?}"))
        }
        [c, ..] => return fail(format!("unknown command {c:?}")),
    };
    if (follow || lines.is_some()) && !matches!(req, Request::Logs { .. }) {
        return fail("-f and -n apply only to logs".into());
    }
    Ok((req, opts))
}

/// `keel ctl ARGS...` against the running PID 1.
pub fn run(args: &[String]) -> ExitCode {
    run_at(Path::new(SOCKET), args)
}

/// [`run`] against the socket at `path`. Exit codes: 0 success, 1 error reported by keel or
/// no connection, 2 bad arguments.
pub fn run_at(path: &Path, args: &[String]) -> ExitCode {
    if matches!(args.first().map(String::as_str), Some("help" | "-h" | "--help")) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (req, opts) = match parse_args(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    let mut out_err = None;
    let res = exchange(path, &req, |raw, resp| {
        let text = match (&resp, opts.json) {
            (_, true) => format!("{raw}\n"),
            (Response::Ok(data), false) => format_data(data),
            (Response::Err(e), false) => {
                eprintln!("keel ctl: {e}");
                String::new()
            }
        };
        failed |= matches!(resp, Response::Err(_));
        // Not println!: it panics on a closed pipe (`keel ctl logs -f | head`).
        let mut stdout = io::stdout().lock();
        match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                out_err = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    match (res, out_err) {
        (Err(e), _) => {
            eprintln!("keel ctl: {e}");
            ExitCode::FAILURE
        }
        (Ok(()), Some(e)) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("keel ctl: writing output: {e}");
            ExitCode::FAILURE
        }
        _ if failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// Connects to `path`, sends `req` and hands each response line (raw, without its newline,
/// and decoded) to `on_response`. Returns after the first response, except for
/// `logs --follow`, which streams until the server closes the connection, sends an error, or
/// `on_response` breaks.
pub fn exchange(
    path: &Path,
    req: &Request,
    mut on_response: impl FnMut(&str, Response) -> ControlFlow<()>,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect {
        path: path.display().to_string(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    })?;
    let follow = matches!(req, Request::Logs { follow: true, .. });
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_read_timeout(if follow { None } else { Some(TIMEOUT) })?;
    // keel may answer and hang up before reading (a refused client): its answer says why,
    // which a broken pipe would not.
    let written = (&stream).write_all(&encode_request(req)).map_err(timeout);
    let mut reader = BufReader::new(&stream);
    if let Err(e) = written {
        let mut line = Vec::new();
        let _ = (&mut reader)
            .take(MAX_RESPONSE as u64)
            .read_until(b'\n', &mut line);
        match serde_json::from_slice::<Response>(&line) {
            Ok(resp @ Response::Err(_)) => {
                let raw = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
                let _ = on_response(&raw, resp);
                return Ok(());
            }
            _ => return Err(e),
        }
    }
    let mut buf = Vec::new();
    let mut answered = false;
    loop {
        buf.clear();
        let limit = MAX_RESPONSE as u64 + 1;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(timeout)?;
        let Some(line) = buf.strip_suffix(b"\n") else {
            return match n {
                0 if answered => Ok(()),
                _ if n > MAX_RESPONSE => Err(ClientError::BadResponse(format!(
                    "response longer than {MAX_RESPONSE} bytes"
                ))),
                _ => Err(ClientError::Closed),
            };
        };
        let raw =
            std::str::from_utf8(line).map_err(|_| ClientError::BadResponse("not valid UTF-8".into()))?;
        let resp: Response =
            serde_json::from_str(raw).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        answered = true;
        let error = matches!(resp, Response::Err(_));
        if on_response(raw, resp).is_break() || !follow || error {
            return Ok(());
        }
    }
}

fn timeout(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{encode, Data, LogLine, RequestReader, ServiceInfo};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<(Request, Options), String> {
        parse_args(&argv(s))
    }

    fn req(s: &str) -> Request {
        parse(s).unwrap().0
    }

    #[test]
    fn parses_every_command() {
        let web = || "web".to_string();
        assert_eq!(req("list"), Request::List);
        assert_eq!(req("boot"), Request::Boot);
        assert_eq!(req("poweroff"), Request::Poweroff);
        assert_eq!(req("reboot"), Request::Reboot);
        assert_eq!(req("halt"), Request::Halt);
        assert_eq!(req("status web"), Request::Status { name: web() });
        assert_eq!(req("start web"), Request::Start { name: web() });
        assert_eq!(req("stop web"), Request::Stop { name: web() });
        assert_eq!(req("restart web"), Request::Restart { name: web() });
        let logs = |follow, lines| Request::Logs {
            name: web(),
            follow,
            lines,
        };
        assert_eq!(req("logs web"), logs(false, None));
        assert_eq!(req("logs web -f"), logs(true, None));
        assert_eq!(req("logs --follow web"), logs(true, None));
        assert_eq!(req("logs web -n 20"), logs(false, Some(20)));
        assert_eq!(req("logs -f --lines 5 web"), logs(true, Some(5)));
    }

    #[test]
    fn json_flag_anywhere() {
        assert_eq!(parse("list").unwrap().1, Options { json: false });
        assert_eq!(
            parse("list --json").unwrap(),
            (Request::List, Options { json: true })
        );
        assert_eq!(parse("--json status web").unwrap().1, Options { json: true });
    }

    #[test]
    fn argument_errors_explain_and_show_usage() {
        let err = |s: &str| parse(s).unwrap_err();
        assert!(err("").contains("no command given"));
        assert!(err("status").contains("status needs a unit NAME"));
        assert!(err("logs -f").contains("logs needs a unit NAME"));
        assert!(err("frobnicate").contains("unknown command \"frobnicate\""));
        assert!(err("list extra").contains("list: unexpected argument \"extra\""));
        assert!(err("stop a b").contains("unexpected argument \"b\""));
        assert!(err("logs web -n").contains("-n wants a number of lines"));
        assert!(err("logs web -n ten").contains("not \"ten\""));
        assert!(err("logs web -n -1").contains("not \"-1\""));
        assert!(err("status web -f").contains("only to logs"));
        assert!(err("list --bogus").contains("unknown option \"--bogus\""));
        assert!(err("nope").ends_with(USAGE));
    }

    /// A socket path in a fresh directory that is removed again when the guard drops.
    struct TempSock(PathBuf);

    impl Drop for TempSock {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn sock_path() -> TempSock {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("keel-ctl-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempSock(dir.join("ctl.sock"))
    }

    /// Accepts one connection, reads one request line, answers `reply` and hangs up;
    /// returns the raw request line it got.
    fn serve_once(path: &Path, reply: Vec<u8>) -> JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8];
            while got.last() != Some(&b'\n') && conn.read(&mut byte).unwrap() == 1 {
                got.push(byte[0]);
            }
            conn.write_all(&reply).unwrap();
            got
        })
    }

    fn collect(path: &Path, req: &Request) -> Result<Vec<(String, Response)>, ClientError> {
        let mut got = Vec::new();
        exchange(path, req, |raw, resp| {
            got.push((raw.to_string(), resp));
            ControlFlow::Continue(())
        })?;
        Ok(got)
    }

    #[test]
    fn exchange_with_a_canned_server() {
        let tmp = sock_path();
        let path = &tmp.0;
        let info = ServiceInfo {
            name: "web".into(),
            state: "running".into(),
            ..Default::default()
        };
        let resp = Response::Ok(Data::Service(info));
        let server = serve_once(path, encode(&resp));
        let req = Request::Status { name: "web".into() };
        let got = collect(path, &req).unwrap();
        let sent = server.join().unwrap();
        assert_eq!(sent, b"{\"cmd\":\"status\",\"name\":\"web\"}\n");
        assert_eq!(RequestReader::new().feed(&sent), vec![Ok(req)]);
        let raw = String::from_utf8(encode(&resp)).unwrap();
        assert_eq!(got, vec![(raw.trim_end().to_string(), resp)]);
    }

    #[test]
    fn follow_streams_until_hangup() {
        let tmp = sock_path();
        let path = &tmp.0;
        let line = |seq| LogLine {
            seq,
            text: format!("line {seq}"),
            ..Default::default()
        };
        let mut reply = encode(&Response::Ok(Data::Logs(vec![line(1)])));
        reply.extend(encode(&Response::Ok(Data::Logs(vec![line(2), line(3)]))));
        let server = serve_once(path, reply);
        let req = Request::Logs {
            name: "web".into(),
            follow: true,
            lines: None,
        };
        let got = collect(path, &req).unwrap();
        server.join().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, Response::Ok(Data::Logs(vec![line(2), line(3)])));
    }

    #[test]
    fn bad_or_missing_answers() {
        let tmp = sock_path();
        let path = &tmp.0;
        let server = serve_once(path, b"{\"ok\":true,\"data\":{\"done\":\"x\"".to_vec());
        assert!(matches!(collect(path, &Request::List), Err(ClientError::Closed)));
        server.join().unwrap();

        let tmp = sock_path();
        let path = &tmp.0;
        let server = serve_once(path, b"not json\n".to_vec());
        let err = collect(path, &Request::List).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid response from keel: expected"),
            "{err}"
        );
        server.join().unwrap();

        // The exit code reflects an error answer.
        let tmp = sock_path();
        let path = &tmp.0;
        let server = serve_once(path, encode(&Response::Err("no such service: x".into())));
        assert_eq!(run_at(path, &argv("stop x")), ExitCode::FAILURE);
        server.join().unwrap();
        assert_eq!(run_at(path, &argv("stop")), ExitCode::from(2));
    }

    #[test]
    fn connect_failure_names_socket_and_errno() {
        let tmp = sock_path();
        let path = tmp.0.with_file_name("absent.sock");
        let err = collect(&path, &Request::List).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("ENOENT"), "{msg}");
        assert!(msg.contains("is keel running"), "{msg}");
        assert_eq!(run_at(&path, &argv("list")), ExitCode::FAILURE);
    }
}
