//! `keel-escape ctl-abuse [SOCKET]`: what a buggy or hostile client does to PID 1's control
//! socket, from a container that may use it (it binds the socket and holds CAP_SYS_BOOT).
//! Each case prints `ABUSE case PASS|FAIL detail`; between the cases a well-behaved request
//! must still be answered. Ends with `ABUSE-END n passed m failed` and a poweroff request
//! (its answer is the last proof PID 1 still serves).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

struct Abuse {
    socket: String,
    passed: u32,
    failed: u32,
}

type Outcome = Result<String, String>;

impl Abuse {
    fn connect(&self) -> Result<UnixStream, String> {
        let s = UnixStream::connect(&self.socket).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// One request on a fresh connection, its first answer line.
    fn ask(&self, request: &[u8]) -> Outcome {
        let mut s = self.connect()?;
        s.write_all(request).map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok(line)
    }

    /// A well-behaved client is answered.
    fn served(&self) -> Outcome {
        let r = self.ask(b"{\"cmd\":\"status\",\"name\":\"bystander\"}\n")?;
        if r.starts_with("{\"ok\":true") && r.contains("\"running\"") {
            Ok("served".into())
        } else {
            Err(format!("a well-behaved request got: {}", r.trim()))
        }
    }

    fn case(&mut self, name: &str, f: impl FnOnce(&Abuse) -> Outcome) {
        let start = Instant::now();
        let result = f(self).and_then(|d| self.served().map(|_| d));
        let ms = start.elapsed().as_millis();
        let (word, detail) = match result {
            Ok(d) => {
                self.passed += 1;
                ("PASS", d)
            }
            Err(d) => {
                self.failed += 1;
                ("FAIL", d)
            }
        };
        println!("ABUSE {name} {word} {detail} ({ms} ms)");
    }
}

/// Read until the peer closes; Ok(bytes read) if it does within the read timeout.
fn until_closed(s: &mut UnixStream) -> Result<usize, String> {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(format!("not closed: {e}")),
        }
    }
}

fn malformed(a: &Abuse) -> Outcome {
    let mut s = a.connect()?;
    s.write_all(
        b"nonsense\n{\"cmd\":\"explode\"}\n{\"cmd\":\"logs\",\"name\":1}\n\xff\xfe\n{}\n[1,2]\n{\"cmd\":\"list\"}\n",
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    for want in [
        "invalid request",
        "unknown variant `explode`",
        "`name` must be a string",
        "not valid UTF-8",
        "",
        "",
    ] {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !(line.starts_with("{\"ok\":false") && line.contains(want)) {
            return Err(format!("expected an error with {want:?}, got {}", line.trim()));
        }
    }
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("{\"ok\":true") {
        return Err(format!("the connection broke after the errors: {}", line.trim()));
    }
    Ok("6 errors, then an answer on the same connection".into())
}

fn truncated(a: &Abuse) -> Outcome {
    let mut s = a.connect()?;
    s.write_all(b"{\"cmd\":\"stat").map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    if got.is_empty() || got.starts_with("{\"ok\":false") {
        Ok(format!("{} bytes of answer, then closed", got.len()))
    } else {
        Err(format!("a half request was answered: {}", got.trim()))
    }
}

fn oversized(a: &Abuse) -> Outcome {
    let mut big = vec![b'x'; 1 << 20];
    big.push(b'\n');
    let mut s = a.connect()?;
    // PID 1 may close before taking it all: that is a refusal too.
    let wrote = s.write_all(&big);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    if line.contains("request longer than") || (line.is_empty() && wrote.is_err()) {
        Ok(format!("1 MiB refused: {}", line.trim()))
    } else {
        Err(format!("1 MiB request got: {:?}", line.trim()))
    }
}

fn garbage(a: &Abuse) -> Outcome {
    let mut s = a.connect()?;
    let mut x: u32 = 0x9e37_79b9;
    let junk: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = s.write_all(&junk);
    let _ = s.shutdown(Shutdown::Write);
    let n = until_closed(&mut s)?;
    Ok(format!("256 KiB of noise: {n} bytes of errors, then closed"))
}

fn slow(a: &Abuse) -> Outcome {
    // Never finishes, one byte a second: dropped at the request time limit, while others
    // are served meanwhile.
    let mut s = a.connect()?;
    let start = Instant::now();
    for b in b"{\"cmd\":\"list\"".iter().cycle() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        if start.elapsed() > Duration::from_secs(40) {
            return Err("a byte-a-second request was not dropped within 40 s".into());
        }
        a.served()?;
        std::thread::sleep(Duration::from_millis(1000));
    }
    let _ = until_closed(&mut s);
    Ok(format!(
        "dropped after {} s, others served every second meanwhile",
        start.elapsed().as_secs()
    ))
}

fn unread(a: &Abuse) -> Outcome {
    // Asks and asks and never reads: dropped once its answers pile up.
    let mut s = a.connect()?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = b"{\"cmd\":\"list\"}\n".repeat(64);
    let start = Instant::now();
    let mut sent = 0usize;
    while s.write_all(&req).is_ok() {
        sent += 64;
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{sent} requests never read and still connected"));
        }
    }
    // Writing failed: PID 1 dropped us, or only stopped reading; only a drop closes.
    let pending = until_closed(&mut s)?;
    Ok(format!(
        "dropped after {sent} unread requests ({} KiB of answers were pending)",
        pending / 1024
    ))
}

fn crowd(a: &Abuse) -> Outcome {
    // More clients than PID 1 keeps: the excess is refused, the rest wait their turn.
    let mut held = Vec::new();
    for _ in 0..100 {
        match a.connect() {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let mut refused = 0;
    for s in &held {
        let mut s = s.try_clone().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        if let Ok(n) = s.read(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("too many control clients") {
                refused += 1;
            }
        }
    }
    let n = held.len();
    drop(held);
    if refused >= n.saturating_sub(32) && refused > 0 {
        Ok(format!("{n} clients at once: {refused} refused"))
    } else {
        Err(format!("{n} clients at once: only {refused} refused"))
    }
}

fn churn(a: &Abuse) -> Outcome {
    // Connections opened and dropped at once, mid-request or not.
    for i in 0..2000 {
        let mut s = a.connect()?;
        if i % 2 == 0 {
            let _ = s.write_all(b"{\"cmd\":\"li");
        }
    }
    Ok("2000 connections dropped at once".into())
}

pub fn main(socket: Option<&str>) {
    let mut a = Abuse {
        socket: socket.unwrap_or("/run/keel/ctl.sock").into(),
        passed: 0,
        failed: 0,
    };
    let first = a.served();
    println!(
        "ABUSE-BEGIN {}",
        first.unwrap_or_else(|e| format!("not served: {e}"))
    );
    a.case("malformed", malformed);
    a.case("truncated", truncated);
    a.case("oversized", oversized);
    a.case("garbage", garbage);
    a.case("crowd", crowd);
    a.case("churn", churn);
    a.case("unread", unread);
    a.case("slow", slow);
    println!("ABUSE-END {} passed {} failed", a.passed, a.failed);
    match a.ask(b"{\"cmd\":\"poweroff\"}\n") {
        Ok(r) => println!("ABUSE poweroff {}", r.trim()),
        Err(e) => println!("ABUSE poweroff not served: {e}"),
    }
}
