//! Human output of `keel ctl`: pure functions, so the layout is tested without a socket.
//! Text that comes from containers (log lines, STATUS=, exit reasons) has its control
//! characters escaped, so a container cannot drive the operator's terminal; `--json` gives
//! the raw text.

use std::fmt::Write as _;

use super::{BootEvent, Data, LogLine, ServiceInfo};

/// Whatever a successful response holds, as it is printed; always ends with a newline
/// unless empty.
pub fn format_data(data: &Data) -> String {
    match data {
        Data::Services(s) => format_services(s),
        Data::Service(s) => format_status(s),
        Data::Logs(l) => format_logs(l),
        Data::Boot(b) => format_boot(b),
        Data::Done(m) => format!("{}\n", clean(m)),
    }
}

/// `keel ctl list`: one aligned row per unit.
pub fn format_services(services: &[ServiceInfo]) -> String {
    let head = ["NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "LAST-EXIT"];
    let rows = services.iter().map(|s| {
        vec![
            clean(&s.name),
            clean(&s.kind),
            clean(&s.state),
            opt(s.pid),
            s.uptime_ms.map_or_else(dash, human_ms),
            s.restarts.to_string(),
            s.last_exit.as_deref().map_or_else(dash, clean),
        ]
    });
    table(&head, &[false, false, false, true, true, true, false], rows)
}

/// `keel ctl status NAME`: `key: value` lines, absent values left out.
pub fn format_status(s: &ServiceInfo) -> String {
    let text = |v: &Option<String>| v.as_deref().map(clean);
    let fields = [
        ("name", Some(clean(&s.name))),
        ("kind", Some(clean(&s.kind))),
        ("state", Some(clean(&s.state))),
        ("ready", Some(if s.ready { "yes" } else { "no" }.to_string())),
        ("pid", s.pid.map(|p| p.to_string())),
        ("uptime", s.uptime_ms.map(human_ms)),
        ("restarts", Some(s.restarts.to_string())),
        ("last exit", text(&s.last_exit)),
        ("health", text(&s.health)),
        ("status", text(&s.status)),
        ("reason", text(&s.reason)),
        ("memory", s.memory_bytes.map(human_bytes)),
        ("pids", s.pids.map(|p| p.to_string())),
    ];
    let mut out = String::new();
    for (key, value) in fields {
        if let Some(v) = value {
            let _ = writeln!(out, "{:<10} {v}", format!("{key}:"));
        }
    }
    out
}

/// `keel ctl logs`: `[seconds since boot] stream text`, like the console log.
pub fn format_logs(lines: &[LogLine]) -> String {
    let mut out = String::new();
    for l in lines {
        let (s, ms) = (l.ts_ms / 1000, l.ts_ms % 1000);
        let _ = writeln!(out, "[{s:>6}.{ms:03}] {} {}", clean(&l.stream), clean(&l.text));
    }
    out
}

/// `keel ctl boot`: units by start time with offset, duration and result, like
/// `systemd-analyze blame` but in boot order, which is what one reads a slow boot by.
pub fn format_boot(events: &[BootEvent]) -> String {
    let mut sorted: Vec<&BootEvent> = events.iter().collect();
    sorted.sort_by(|a, b| (a.start_ms, &a.name).cmp(&(b.start_ms, &b.name)));
    let head = ["START", "DURATION", "RESULT", "KIND", "NAME"];
    let rows = sorted.into_iter().map(|e| {
        vec![
            format!("+{}.{:03}s", e.start_ms / 1000, e.start_ms % 1000),
            e.duration_ms.map_or_else(dash, human_ms),
            clean(&e.result),
            clean(&e.kind),
            clean(&e.name),
        ]
    });
    table(&head, &[true, true, false, false, false], rows)
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
fn table(head: &[&str], right: &[bool], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    all.extend(rows);
    let mut widths = vec![0; head.len()];
    for row in &all {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dash() -> String {
    "-".into()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(dash, |v| v.to_string())
}

/// Compact and unambiguous at a glance: `850ms`, `12.3s`, `3m12s`, `2h5m`, `3d4h`.
pub(crate) fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}.{}s", ms % 1000 / 100),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// Binary units with one decimal: `512B`, `1.5KiB`, `120.0MiB`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let (mut whole, mut unit) = (b, "B");
    let mut tenths = 0;
    for u in UNITS {
        if whole < 1024 {
            break;
        }
        tenths = (whole % 1024) * 10 / 1024;
        whole /= 1024;
        unit = u;
    }
    format!("{whole}.{tenths}{unit}")
}

/// Control characters (escape sequences, carriage returns, newlines) shown escaped.
fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, state: &str, pid: Option<i32>, up: Option<u64>, exit: Option<&str>) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            kind: "service".into(),
            state: state.into(),
            pid,
            uptime_ms: up,
            last_exit: exit.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn services_table_is_aligned() {
        let mut db = svc("database", "running", Some(1234), Some(192_000), None);
        db.restarts = 12;
        let rows = [
            svc("web", "ready", Some(7), Some(5_400), Some("exit code 1")),
            db,
            svc("net", "exited", None, None, Some("exit code 0")),
        ];
        let want = "\
NAME      KIND     STATE     PID  UPTIME  RESTARTS  LAST-EXIT
web       service  ready       7    5.4s         0  exit code 1
database  service  running  1234   3m12s        12  -
net       service  exited      -       -         0  exit code 0
";
        assert_eq!(format_services(&rows), want);
        assert_eq!(
            format_services(&[]),
            "NAME  KIND  STATE  PID  UPTIME  RESTARTS  LAST-EXIT\n"
        );
    }

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let rows = [
            svc("a", "running", Some(1), Some(1), Some("signal SIGKILL")),
            svc("a-much-longer-name", "backoff", None, Some(100_000_000), None),
        ];
        let out = format_services(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        // Left-aligned columns start, right-aligned ones end, at the header's offset.
        for (col, right) in [
            ("KIND", false),
            ("PID", true),
            ("UPTIME", true),
            ("LAST-EXIT", false),
        ] {
            let start = lines[0].find(col).unwrap();
            let at = if right { start + col.len() } else { start };
            for l in &lines[1..] {
                let (before, after) = (&l[at - 1..at], &l[at..at + 1]);
                let (outside, inside) = if right { (after, before) } else { (before, after) };
                assert_eq!(outside, " ", "{col} in {l:?}");
                assert_ne!(inside, " ", "{col} in {l:?}");
            }
        }
        assert!(out.lines().all(|l| l == l.trim_end()));
        assert!(lines[2].contains("1d3h"));
    }

    #[test]
    fn status_lines() {
        let mut s = svc("web", "failed", Some(9), Some(61_000), Some("signal SIGKILL"));
        s.reason = Some("health check\x1b[31m failed".into());
        s.memory_bytes = Some(3 * 1024 * 1024 + 512 * 1024);
        let want = "\
name:      web
kind:      service
state:     failed
ready:     no
pid:       9
uptime:    1m1s
restarts:  0
last exit: signal SIGKILL
reason:    health check\\u{1b}[31m failed
memory:    3.5MiB
";
        assert_eq!(format_status(&s), want);
    }

    #[test]
    fn logs_lines() {
        let l = |ts_ms, stream: &str, text: &str| LogLine {
            seq: 0,
            ts_ms,
            stream: stream.into(),
            text: text.into(),
        };
        let out = format_logs(&[l(1_234, "out", "hello"), l(123_456_789, "err", "a\rb")]);
        assert_eq!(out, "[     1.234] out hello\n[123456.789] err a\\rb\n");
    }

    #[test]
    fn boot_sorted_by_start() {
        let ev = |name: &str, kind: &str, start_ms, duration_ms, result: &str| BootEvent {
            name: name.into(),
            kind: kind.into(),
            start_ms,
            duration_ms,
            result: result.into(),
        };
        let out = format_boot(&[
            ev("web", "service", 2_500, None, "running"),
            ev("net", "onboot", 12, Some(2_480), "exit code 0"),
            ev("dhcp", "onboot", 12, Some(150), "exit code 0"),
        ]);
        let want = "  START  DURATION  RESULT       KIND     NAME
+0.012s     150ms  exit code 0  onboot   dhcp
+0.012s      2.4s  exit code 0  onboot   net
+2.500s         -  running      service  web
";
        assert_eq!(out, want);
    }

    #[test]
    fn humanised_units() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_345), "12.3s");
        assert_eq!(human_ms(192_000), "3m12s");
        assert_eq!(human_ms(7_500_000), "2h5m");
        assert_eq!(human_ms(273_600_000), "3d4h");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(5 << 30), "5.0GiB");
        assert_eq!(format_data(&Data::Done("stopping web".into())), "stopping web\n");
    }
}
