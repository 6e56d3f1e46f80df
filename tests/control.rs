//! The control socket of a real PID 1 (development mode on the host), abused: malformed,
//! oversized, never-finished and too many requests. Each gets an error or is dropped, and
//! a well-behaved client is served throughout.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Pid1 {
    launcher: Child,
    pid: i32,
    socket: PathBuf,
}

impl Drop for Pid1 {
    /// Killing the namespace's PID 1 ends everything in it, whatever the test left.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
        let _ = self.launcher.wait();
    }
}

// The launcher is waited for by Pid1's Drop, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn start() -> Pid1 {
    require_root();
    let keel = env!("CARGO_BIN_EXE_keel");
    let root = unpacked_image("tests/images/minimal", keel);
    let mut launcher = Command::new(keel)
        .args(["init", "--root"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // PID 1 of the new namespace is the launcher's only child.
    let children = format!("/proc/{}/task/{}/children", launcher.id(), launcher.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = pid.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()) {
            let socket = PathBuf::from(format!("/proc/{pid}/root/run/keel/ctl.sock"));
            if socket.exists() {
                return Pid1 {
                    launcher,
                    pid,
                    socket,
                };
            }
        }
        if Instant::now() > deadline {
            let _ = launcher.kill();
            let _ = launcher.wait();
            panic!("keel init did not open its control socket");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connect(p: &Pid1) -> UnixStream {
    let s = UnixStream::connect(&p.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn ask(p: &Pid1, request: &[u8]) -> String {
    let mut s = connect(p);
    s.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

fn served(p: &Pid1) {
    let r = ask(p, b"{\"cmd\":\"status\",\"name\":\"idle\"}\n");
    assert!(
        r.starts_with("{\"ok\":true") && r.contains("\"name\":\"idle\""),
        "{r}"
    );
}

#[test]
fn abuse_of_the_control_socket_never_hurts_pid1() {
    let p = start();
    served(&p);

    // Malformed, unknown, wrong types, not UTF-8: an error each, on one connection.
    let mut s = connect(&p);
    s.write_all(
        b"nonsense\n{\"cmd\":\"explode\"}\n{\"cmd\":\"logs\",\"name\":1}\n\xff\xfe\n{\"cmd\":\"list\"}\n",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for want in [
        "invalid request",
        "unknown variant `explode`",
        "`name` must be a string",
        "not valid UTF-8",
    ] {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("{\"ok\":false") && line.contains(want),
            "{want}: {line}"
        );
    }
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("{\"ok\":true"),
        "the connection still works: {line}"
    );

    // Oversized: an error, and PID 1 keeps serving.
    let mut big = vec![b'x'; 1 << 20];
    big.push(b'\n');
    let r = ask(&p, &big);
    assert!(r.contains("request longer than 4096 bytes"), "{r}");
    served(&p);

    // A client that never finishes its request, plus as many idle ones as allowed: PID 1
    // refuses the excess and still answers.
    let mut stalled = connect(&p);
    stalled.write_all(b"{\"cmd\":\"sta").unwrap();
    let idle: Vec<UnixStream> = (0..40).map(|_| connect(&p)).collect();
    let mut refused = 0;
    for c in &idle {
        let mut c = c.try_clone().unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = c.read(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("too many control clients") {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 8,
        "40 idle clients beyond the limit of 32: {refused} refused"
    );
    drop(idle);
    served(&p);

    // The stalled client is dropped after its time limit.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a never-finished request must end in a closed connection");
    served(&p);

    // A client that sends its request and shuts its end still gets the answer.
    let mut s = connect(&p);
    s.write_all(b"{\"cmd\":\"list\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("{\"ok\":true"), "half-closed client: {all:?}");

    // Clients that hang up at once, more than the limit: their slots are free again for
    // the next caller, even before PID 1 has seen their hang-ups.
    for _ in 0..200 {
        drop(connect(&p));
    }
    served(&p);

    let r = ask(&p, b"{\"cmd\":\"poweroff\"}\n");
    assert!(r.contains("poweroff requested"), "{r}");
}
