#!/usr/bin/env python3
"""Seeds for the fuzz corpora, from the project's real inputs: the demo manifest, the
manifests and layers the unit tests use, the control requests keel ctl sends, the test
images' bundle configs. Run from fuzz/: ./make-seeds.py DIR (then `cargo fuzz cmin`)."""
import gzip, hashlib, io, json, os, re, subprocess, sys, tarfile

out = sys.argv[1] if len(sys.argv) > 1 else "seeds"
top = os.path.dirname(os.path.abspath(__file__)) + "/.."

def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)

# manifest: the demo and every raw-string manifest of the manifest tests.
put("manifest", open(f"{top}/examples/demo/keel.yml").read())
src = open(f"{top}/src/manifest/tests.rs").read()
for m in re.findall(r'r#"(.*?)"#', src, re.S):
    if ":" in m:
        put("manifest", m)

# ... and one using every keel field in containers that generate a config.json, so that
# mutations reach the check that the device reads back what the build accepted.
put("manifest", """onboot:
  - name: init
    image: ./busybox
    command: [/bin/true]
    timeout: 30s
    stop_signal: TERM
services:
  - name: db
    image: ./busybox
    command: [/bin/db]
    restart: on-failure
    readiness: notify
    healthcheck: {command: [/bin/db, ping], interval: 5s, timeout: 500ms, retries: 2}
    stop_timeout: 20
    stop_signal: SIGINT
    start_timeout: 1m
    console: false
  - name: web
    image: ./busybox
    depends_on: [db]
    readiness: {file: /run/ready}
    stop_signal: "1"
    annotations: {org.example.web: "1"}
onshutdown:
  - name: bye
    image: ./busybox
    timeout: 250ms
""")

# boot_config: 0 cmdline, 1 duration, 2.. config.json of the test bundles.
for c in ["console=ttyS0 keel.debug quiet keel.onboot_failure=poweroff keel.onboot_timeout=5s "
          "keel.onshutdown_timeout=250ms keel.stop_timeout=2m keel.watchdog=30s",
          'a "b c" d="e f" keel.frobnicate=1 keel.debug=maybe keel.onboot_timeout']:
    put("boot_config", b"\x00" + c.encode())
for d in ["10", "250ms", "2m", "1h", " 3s ", "18446744073709551615ms"]:
    put("boot_config", b"\x01" + d.encode())
for root, _, files in os.walk(f"{top}/tests/images"):
    for f in files:
        p = os.path.join(root, f)
        if f == "annotations":
            kv = dict(l.split("=", 1) for l in open(p).read().splitlines() if "=" in l)
            put("boot_config", b"\x02" + json.dumps({"annotations": kv}).encode())
        elif f == "config.json":
            put("boot_config", b"\x02" + open(p, "rb").read())
put("boot_config", b"\x06" + json.dumps({"annotations": {
    "org.keel.restart": "on-failure", "org.keel.restart_delay": "250ms",
    "org.keel.restart_factor": "3", "org.keel.start_limit": "4/30s",
    "org.keel.depends_on": "db, cache,", "org.keel.readiness": "file:/run/ready",
    "org.keel.healthcheck": '["/bin/true", "x"]', "org.keel.health_retries": "2",
    "org.keel.health_interval": "1s", "org.keel.stop_signal": "SIGINT",
    "org.keel.console": "off", "org.keel.timeout": "5s"}}).encode())

# ctl_request: what keel ctl sends, with split points chosen by the first byte.
reqs = [{"cmd": "list"}, {"cmd": "status", "name": "web"}, {"cmd": "logs", "name": "web",
        "follow": True, "lines": 10}, {"cmd": "boot"}, {"cmd": "poweroff"},
        {"cmd": "restart", "name": "db"}]
lines = "".join(json.dumps(r) + "\n" for r in reqs)
put("ctl_request", b"\x03" + lines.encode())
put("ctl_request", b"\x00" + b'nope\n{"cmd":"halt"}\n{"cmd":"status","nmae":"w"}\n')
put("ctl_request", b"\x10" + b" " * 4097 + b'\n{"cmd":"list"}\n')
put("ctl_request", b"\x01" + b'{"ok":true,"data":{"services":[{"name":"a","kind":"service","state":"running","pid":3,"uptime_ms":5,"last_exit":null,"health":null,"status":null,"reason":null,"memory_bytes":null,"pids":null}]}}\n{"ok":false,"error":"x"}\n')

# log_capture: lines, CRLF, a long line, UTF-8 across a cut.
put("log_capture", b"\x05hello\nworld\r\npartial")
put("log_capture", b"\x3f" + "é".encode() * 2100 + b"\n\xff\xfe\n")

# cpio_read: an archive GNU cpio writes of a small tree.
tree = os.path.join(out, ".tree")
subprocess.run(["rm", "-rf", tree], check=True)
os.makedirs(f"{tree}/etc")
open(f"{tree}/etc/hostname", "w").write("keel\n")
os.symlink("hostname", f"{tree}/etc/name")
os.link(f"{tree}/etc/hostname", f"{tree}/hl")
os.mkfifo(f"{tree}/fifo")
names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
arch = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=names,
                      capture_output=True, check=True).stdout
put("cpio_read", arch)
subprocess.run(["rm", "-rf", tree], check=True)

# oci_unpack: layers like the unit tests', separated by SEP, first byte = compression.
SEP = b"%%KEEL-LAYER%%"
def tar(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, arg in entries:
            i = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = arg
                i.size = len(data)
            elif kind == "dir":
                i.type = tarfile.DIRTYPE
            elif kind == "sym":
                i.type, i.linkname = tarfile.SYMTYPE, arg
            elif kind == "link":
                i.type, i.linkname = tarfile.LNKTYPE, arg
            elif kind in ("chr", "blk"):
                i.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                i.devmajor, i.devminor = arg
            elif kind == "fifo":
                i.type = tarfile.FIFOTYPE
            i.mode = 0o755 if kind == "dir" else 0o644
            t.addfile(i, io.BytesIO(data) if data else None)
    return b.getvalue()
def layers(*ls):
    return SEP.join(bytes([c]) + data for c, data in ls)
def zst(data):
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
lower = tar([("etc/", "dir", None), ("etc/a", "file", b"a"), ("d/x", "file", b"x"),
             ("o/lower", "file", b"lower"), ("bin/busybox", "file", b"#!bb"),
             ("bin/ls", "sym", "busybox"), ("bin/sh", "link", "bin/busybox")])
upper = tar([("etc/.wh.a", "file", b""), (".wh.d", "file", b""), ("o/.wh..wh..opq", "file", b""),
             ("o/new", "file", b"new"), ("sbin/init", "link", "./bin/busybox")])
put("oci_unpack", layers((0, lower), (1, gzip.compress(upper, mtime=0))))
put("oci_unpack", layers((2, zst(lower))))
esc = tar([("x/", "dir", None), ("../evil", "file", b"evil"), ("a/../../evil", "file", b"e"),
           ("/evil", "file", b"e"), ("pw", "link", "../canary/victim"),
           ("x/.wh...", "file", b"")])
put("oci_unpack", layers((0, esc)))
links = tar([("up", "sym", "../../../.."), ("out", "sym", "../canary"), ("abs", "sym", "/dev/shm/keel-fuzz-canary"),
             ("f", "sym", "/dev/shm/keel-fuzz-canary/victim"), ("loop", "sym", "loop"),
             ("dev/null", "chr", (1, 3)), ("dev/loop0", "blk", (7, 0)), ("run/fifo", "fifo", None)])
through = tar([("up/canary/victim", "file", b"evil"), ("out/.wh.victim", "file", b""),
               ("abs/new", "file", b"new"), ("f", "file", b"new"), ("abs/.wh..wh..opq", "file", b""),
               ("hl", "link", "out/victim"), ("loop/x", "file", b"")])
put("oci_unpack", layers((0, links), (0, through)))

# cpio_roundtrip: arbitrary's encoding is the mutator's business; a few random starts.
import random
rnd = random.Random(7)
for n in (64, 256, 1024):
    put("cpio_roundtrip", bytes(rnd.randrange(256) for _ in range(n)))
