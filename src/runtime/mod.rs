//! The embedded OCI runtime: a thin adapter over libcontainer that PID 1, `keel run` and the
//! tests share. It checks a bundle before handing it over (so errors name the file and the
//! field), keeps libcontainer's side effects off the caller, and never lets a panic inside
//! the library escape.
//!
//! The caller owns reaping: `start` returns the container's PID, the caller `waitpid`s it
//! (PID 1 does so from its SIGCHLD handler) and then calls `delete`.

use std::any::Any;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, Spec};

use crate::seccomp::{self, Filter, Profile};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("bundle {bundle}: {msg}")]
    Bundle { bundle: PathBuf, msg: String },
    #[error("container {id}: {step} failed: {msg}")]
    Runtime {
        id: String,
        step: &'static str,
        msg: String,
    },
    #[error("container {id}: {sig} failed: {source}")]
    Signal {
        id: String,
        sig: Signal,
        source: nix::Error,
    },
    #[error("{path}: {source}")]
    Seccomp {
        path: PathBuf,
        source: seccomp::SeccompError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// Where containers' state and cgroups live.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// libcontainer state directories: `<state_root>/<id>`.
    state_root: PathBuf,
    /// Rewritten bundles for configs that need a cgroup path: `<state_root>/.bundles/<id>`.
    patched_root: PathBuf,
    /// Absolute cgroup path under which containers without one are placed.
    cgroup_parent: String,
}

/// A created (and maybe started) container.
pub struct Handle {
    pub id: String,
    pub pid: Pid,
    /// The container's cgroup, relative to the cgroup root (e.g. `/keel/services.web`).
    pub cgroup: Option<PathBuf>,
    container: Container,
    patched_bundle: Option<PathBuf>,
    /// The bundle as given, for the seccomp filter of execs into the container.
    bundle: PathBuf,
}

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Handle {
    /// The container's cgroup directory, when it has one.
    fn cgroup_dir(&self) -> Option<PathBuf> {
        let cg = self.cgroup.as_ref()?;
        Some(Path::new(CGROUP_ROOT).join(cg.strip_prefix("/").unwrap_or(cg)))
    }
}

/// The fault suite's injected failure of `step` (compiled out of shipped builds).
fn fault(id: &str, step: &'static str) -> Result<()> {
    if crate::fault::injected(step, id) {
        return Err(RuntimeError::Runtime {
            id: id.into(),
            step,
            msg: crate::fault::ERRNO.to_string(),
        });
    }
    Ok(())
}

/// Where in a container the sd_notify socket directory is mounted.
pub const NOTIFY_MOUNT: &str = "/run/keel-notify";

/// What the caller adds to a container: stdio (`None` inherits the caller's), and a host
/// directory holding an sd_notify socket, bound at NOTIFY_MOUNT with NOTIFY_SOCKET set.
#[derive(Default)]
pub struct Stdio {
    pub notify_dir: Option<PathBuf>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Runs in the container's init right before execve: undo what PID 1's process state
/// would otherwise leak into every container, and install the seccomp filter (compiled in
/// the parent) as the very last step, after the capabilities are dropped.
#[derive(Clone)]
struct KeelExecutor {
    seccomp: Option<Filter>,
}

impl Executor for KeelExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        // The runtime's own errors from here on go nowhere: say it on the container's stderr.
        let fail = |msg: String| {
            let _ = io::Write::write_all(
                &mut io::stderr(),
                format!("keel: container init: {msg}\n").as_bytes(),
            );
            ExecutorError::Other(msg)
        };
        // PID 1 blocks signals to read them from a signalfd; a blocked mask survives execve.
        signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| fail(format!("cannot reset the signal mask: {e}")))?;
        if let Some(f) = &self.seccomp {
            f.install().map_err(|e| fail(e.to_string()))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

fn describe(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg
}

fn panic_text(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "unknown panic".into(),
        },
    }
}

/// Run a libcontainer step, turning its errors and panics into `RuntimeError::Runtime`.
fn guarded<T, E: std::error::Error>(
    id: &str,
    step: &'static str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RuntimeError::Runtime {
            id: id.into(),
            step,
            msg: describe(&e),
        }),
        Err(p) => Err(RuntimeError::Runtime {
            id: id.into(),
            step,
            msg: format!("runtime panicked: {}", panic_text(p)),
        }),
    }
}

fn oci_error(e: oci_spec::OciSpecError) -> String {
    match e {
        oci_spec::OciSpecError::Io(e) => e.to_string(),
        oci_spec::OciSpecError::SerDe(e) => e.to_string(),
        e => e.to_string(),
    }
}

/// Run a libcontainer create or exec, which forks from the caller, with the caller's state
/// set for the child and put back afterwards. The child inherits the caller's
/// oom_score_adj unless its spec sets one (libcontainer writes that into the caller itself);
/// PID 1 runs at -1000, and a container inheriting that could never be OOM-killed, so 0 is
/// ours to write. libcontainer may also move the caller's cwd.
fn as_parent_of<T>(child_oom: Option<i32>, f: impl FnOnce() -> T) -> T {
    const PATH: &str = "/proc/self/oom_score_adj";
    let own = fs::read_to_string(PATH).ok();
    let own = own.as_deref().map(str::trim);
    if child_oom.is_none() && own != Some("0") {
        let _ = fs::write(PATH, "0");
    }
    let r = f();
    if let Some(own) = own {
        if own != child_oom.unwrap_or(0).to_string() {
            let _ = fs::write(PATH, own);
        }
    }
    let _ = nix::unistd::chdir("/");
    r
}

/// Load and check a bundle's config.json; errors name the file and what is wrong.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    // oci-spec's own loader: the same deserializer libcontainer links, so it is not built twice.
    let spec = Spec::load(&path).map_err(|e| RuntimeError::Config {
        path: path.clone(),
        msg: oci_error(e),
    })?;
    let bad = |msg: String| RuntimeError::Config {
        path: path.clone(),
        msg,
    };
    if !spec.version().starts_with("1.") {
        return Err(bad(format!(
            "ociVersion {:?} is not supported (1.x only)",
            spec.version()
        )));
    }
    // Hooks run in the runtime's caller (PID 1) or hold it up while the container is made,
    // and are waited for without a bound unless they set one: one hanging hook would stop
    // the whole machine. keel's own bundles never have any.
    if let Some(h) = spec.hooks() {
        let kinds = [
            ("prestart", h.prestart()),
            ("createRuntime", h.create_runtime()),
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
            ("poststart", h.poststart()),
            ("poststop", h.poststop()),
        ];
        let used: Vec<&str> = kinds
            .iter()
            .filter(|(_, v)| v.as_ref().is_some_and(|v| !v.is_empty()))
            .map(|(k, _)| *k)
            .collect();
        if !used.is_empty() {
            return Err(bad(format!(
                "hooks.{} not supported: hooks would run inside PID 1 (or hold it up) without a time limit",
                used.join(", hooks.")
            )));
        }
    }
    let root = spec.root().as_ref().ok_or_else(|| bad("no \"root\"".into()))?;
    let rootfs = bundle.join(root.path());
    if !rootfs.is_dir() {
        return Err(RuntimeError::Bundle {
            bundle: bundle.into(),
            msg: format!("root.path {} is not a directory", rootfs.display()),
        });
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| bad("no \"process\"".into()))?;
    let args = process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("process.args is empty".into()))?;
    if !executable_exists(&rootfs, &args[0], process.env().as_deref().unwrap_or(&[])) {
        return Err(RuntimeError::Bundle {
            bundle: bundle.into(),
            msg: format!(
                "executable {:?} (process.args[0]) not found in {}",
                args[0],
                rootfs.display()
            ),
        });
    }
    Ok(spec)
}

/// Does `exe` exist in the rootfs (directly, or on the spec's PATH)? Symlinks are not
/// followed: an absolute link would resolve against the host.
fn executable_exists(rootfs: &Path, exe: &str, env: &[String]) -> bool {
    let exists = |p: &str| fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).is_ok();
    if exe.contains('/') {
        return exists(exe);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').any(|dir| exists(&format!("{dir}/{exe}")))
}

/// Annotation that lifts keel's default seccomp profile from a bundle without
/// `linux.seccomp`: `org.keel.seccomp=unconfined`.
pub const SECCOMP_ANNOTATION: &str = "org.keel.seccomp";

/// The seccomp filter a container gets: its `linux.seccomp`, or keel's default profile
/// for its capabilities when it has none, unless its annotation says `unconfined`.
pub fn seccomp_filter(bundle: &Path, spec: &Spec) -> Result<Option<Filter>> {
    let path = bundle.join("config.json");
    let fail = |source| RuntimeError::Seccomp {
        path: path.clone(),
        source,
    };
    let process = spec.process().as_ref();
    let caps = |set: fn(
        &oci_spec::runtime::LinuxCapabilities,
    ) -> &Option<std::collections::HashSet<Capability>>|
     -> Vec<String> {
        process
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| set(c).as_ref())
            .map(|s| s.iter().map(|c| format!("CAP_{c}")).collect())
            .unwrap_or_default()
    };
    let (profile, flags) = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Profile::from_oci(s).map_err(fail)?,
        None => {
            let annotation = spec
                .annotations()
                .as_ref()
                .and_then(|a| a.get(SECCOMP_ANNOTATION))
                .map(String::as_str);
            match annotation {
                Some("unconfined") => return Ok(None),
                None | Some("default") => (seccomp::default_profile(&caps(|c| c.bounding())), 0),
                Some(other) => {
                    return Err(RuntimeError::Config {
                        path,
                        msg: format!(
                            "annotation {SECCOMP_ANNOTATION}={other:?}: expected default or unconfined \
                             (a profile goes into linux.seccomp)"
                        ),
                    })
                }
            }
        }
    };
    // Without no_new_privs, installing a filter takes CAP_SYS_ADMIN, and the filter goes in
    // after the capabilities are set.
    let nnp = process.and_then(|p| p.no_new_privileges()) == Some(true);
    if !nnp && !caps(|c| c.effective()).iter().any(|c| c == "CAP_SYS_ADMIN") {
        return Err(RuntimeError::Config {
            path,
            msg: "a seccomp filter needs process.noNewPrivileges (or CAP_SYS_ADMIN in the effective set); \
                  set noNewPrivileges, or annotate org.keel.seccomp=unconfined"
                .into(),
        });
    }
    profile.compile(flags).map(Some).map_err(fail)
}

impl Runtime {
    pub fn new(state_root: impl Into<PathBuf>, cgroup_parent: &str) -> Result<Self> {
        let state_root = state_root.into();
        let patched_root = state_root.join(".bundles");
        fs::create_dir_all(&patched_root).map_err(|source| RuntimeError::Io {
            what: "cannot create runtime state directory",
            path: patched_root.clone(),
            source,
        })?;
        Ok(Runtime {
            state_root,
            patched_root,
            cgroup_parent: format!("/{}", cgroup_parent.trim_matches('/')),
        })
    }

    /// Create and start the container of `bundle`; returns once its process is running.
    pub fn run(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<Handle> {
        let mut handle = self.create(id, bundle, stdio)?;
        let started = fault(id, "start").and_then(|()| guarded(id, "start", || handle.container.start()));
        if let Err(e) = started {
            self.delete(handle).ok();
            return Err(e);
        }
        Ok(handle)
    }

    /// Create the container (status "created": its init waits for `start`).
    pub fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<Handle> {
        fault(id, "create")?;
        // Checked here, not left to libcontainer: cleaning up after a failed create must
        // never touch a container that already existed under this id.
        if self.state_root.join(id).exists() {
            return Err(RuntimeError::Runtime {
                id: id.into(),
                step: "create",
                msg: "a container with this id already exists".into(),
            });
        }
        let spec = load_spec(bundle)?;
        let bundle = fs::canonicalize(bundle).map_err(|source| RuntimeError::Io {
            what: "cannot resolve bundle",
            path: bundle.into(),
            source,
        })?;
        let executor = KeelExecutor {
            seccomp: seccomp_filter(&bundle, &spec)?,
        };
        // libcontainer needs an absolute cgroup path (a relative one means systemd).
        let cgroup_ok = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .is_some_and(|p| p.is_absolute());
        let patched_bundle = match (cgroup_ok, &stdio.notify_dir) {
            (true, None) => None,
            (_, notify) => Some(self.patch(id, &bundle, !cgroup_ok, notify.as_deref())?),
        };
        let cgroup = match cgroup_ok {
            true => spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()),
            false => Some(self.default_cgroup(id)),
        };
        let child_oom = spec.process().as_ref().and_then(|p| p.oom_score_adj());
        let mut builder =
            ContainerBuilder::new(id.to_string(), SyscallType::default()).with_executor(executor);
        builder = guarded(id, "create", || builder.with_root_path(&self.state_root))?;
        if let Some(fd) = stdio.stdin {
            builder = builder.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            builder = builder.with_stderr(fd);
        }
        let from = patched_bundle.clone().unwrap_or_else(|| bundle.clone());
        let built = as_parent_of(child_oom, || {
            guarded(id, "create", || {
                builder.as_init(&from).with_systemd(false).build()
            })
        });

        let container = match built {
            Ok(c) => c,
            Err(e) => {
                self.cleanup_failed(id, patched_bundle.as_deref());
                return Err(e);
            }
        };
        let pid = match container.pid() {
            Some(pid) => pid,
            None => {
                let h = Handle {
                    id: id.into(),
                    pid: Pid::from_raw(0),
                    cgroup: None,
                    container,
                    patched_bundle,
                    bundle,
                };
                self.delete(h).ok();
                return Err(RuntimeError::Runtime {
                    id: id.into(),
                    step: "create",
                    msg: "no container PID".into(),
                });
            }
        };
        Ok(Handle {
            id: id.into(),
            pid,
            cgroup,
            container,
            patched_bundle,
            bundle,
        })
    }

    /// Write a copy of the config with an absolute rootfs and a cgroup path under ours.
    /// The cgroup a container gets when its config names none (or a relative one).
    fn default_cgroup(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("{}/{id}", self.cgroup_parent))
    }

    /// Write a copy of the config with an absolute rootfs, and a cgroup path under ours
    /// and/or the sd_notify mount. Edited as plain JSON: linking a serializer for the whole
    /// OCI spec would cost the device binary tens of kilobytes.
    fn patch(&self, id: &str, bundle: &Path, set_cgroup: bool, notify_dir: Option<&Path>) -> Result<PathBuf> {
        use serde_json::{json, Value};
        let dir = self.patched_root.join(id);
        let io = |what, source| RuntimeError::Io {
            what,
            path: dir.clone(),
            source,
        };
        let config = bundle.join("config.json");
        let text = fs::read(&config).map_err(|source| RuntimeError::Io {
            what: "cannot read",
            path: config.clone(),
            source,
        })?;
        let mut v: Value = serde_json::from_slice(&text).map_err(|e| RuntimeError::Config {
            path: config.clone(),
            msg: e.to_string(),
        })?;
        if let Some(root) = v.pointer_mut("/root/path") {
            let abs = bundle.join(root.as_str().unwrap_or("rootfs"));
            *root = json!(abs);
        }
        if set_cgroup {
            if !v["linux"].is_object() {
                v["linux"] = json!({});
            }
            v["linux"]["cgroupsPath"] = json!(self.default_cgroup(id));
        }
        if let Some(ndir) = notify_dir {
            let mount = json!({
                "destination": NOTIFY_MOUNT, "type": "bind", "source": ndir,
                "options": ["bind", "nosuid", "nodev", "noexec"],
            });
            match v["mounts"].as_array_mut() {
                Some(m) => m.push(mount),
                None => v["mounts"] = json!([mount]),
            }
            let mut env = vec![format!("NOTIFY_SOCKET={NOTIFY_MOUNT}/notify.sock")];
            // The sd_notify watchdog, as the protocol tells it (no WATCHDOG_PID: the service's PID
            // differs inside its PID namespace). The value is the one PID 1 enforces.
            let watchdog = v
                .pointer("/annotations/org.keel.watchdog")
                .and_then(Value::as_str)
                .and_then(|w| crate::duration::parse(w).ok())
                .filter(|t| !t.is_zero());
            if let Some(t) = watchdog {
                env.push(format!("WATCHDOG_USEC={}", t.as_micros()));
            }
            match v["process"]["env"].as_array_mut() {
                Some(e) => {
                    e.retain(|x| {
                        let x = x.as_str().unwrap_or("");
                        !x.starts_with("NOTIFY_SOCKET=") && !x.starts_with("WATCHDOG_")
                    });
                    e.extend(env.into_iter().map(Value::from));
                }
                None => v["process"]["env"] = json!(env),
            }
        }
        fs::create_dir_all(&dir).map_err(|e| io("cannot create", e))?;
        let out = serde_json::to_vec(&v).map_err(|e| io("cannot encode config for", io::Error::other(e)))?;
        fs::write(dir.join("config.json"), out).map_err(|e| io("cannot write config in", e))?;
        Ok(dir)
    }

    /// A failed create can leave state and a cgroup behind.
    fn cleanup_failed(&self, id: &str, patched: Option<&Path>) {
        let dir = self.state_root.join(id);
        if dir.exists() {
            let deleted = Container::load(dir.clone())
                .ok()
                .map(|mut c| guarded(id, "delete", || c.delete(true)).is_ok())
                .unwrap_or(false);
            if !deleted {
                let _ = fs::remove_dir_all(&dir);
            }
        }
        if let Some(p) = patched {
            let _ = fs::remove_dir_all(p);
        }
    }

    /// Run `args` inside the running container, as an exec: its own process in the
    /// container's namespaces and cgroup, with no stdio. Returns its PID; the caller reaps it.
    pub fn exec(&self, handle: &Handle, args: &[String]) -> Result<Pid> {
        let id = handle.id.as_str();
        let null = || -> Result<fs::File> {
            fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|source| RuntimeError::Io {
                    what: "cannot open",
                    path: "/dev/null".into(),
                    source,
                })
        };
        // The same filter as the container's own process: an exec is no way around it.
        let spec = load_spec(&handle.bundle)?;
        let executor = KeelExecutor {
            seccomp: seccomp_filter(&handle.bundle, &spec)?,
        };
        let mut builder =
            ContainerBuilder::new(id.to_string(), SyscallType::default()).with_executor(executor);
        builder = guarded(id, "exec", || builder.with_root_path(&self.state_root))?;
        builder = builder
            .with_stdin(null()?)
            .with_stdout(null()?)
            .with_stderr(null()?);
        as_parent_of(None, || {
            guarded(id, "exec", || {
                builder.as_tenant().with_container_args(args.to_vec()).build()
            })
        })
    }

    /// Signal the container's init process only (the OCI `kill` default).
    pub fn signal(&self, handle: &Handle, sig: Signal) -> Result<()> {
        signal::kill(handle.pid, sig).map_err(|source| RuntimeError::Signal {
            id: handle.id.clone(),
            sig,
            source,
        })
    }

    /// SIGKILL every process of the container (its whole cgroup).
    pub fn kill_all(&self, handle: &mut Handle) -> Result<()> {
        let r = guarded(&handle.id, "kill", || {
            handle.container.kill(Signal::SIGKILL, true)
        });
        // Killing the init takes the rest of a private PID namespace with it, whatever happened above.
        let _ = signal::kill(handle.pid, Signal::SIGKILL);
        r
    }

    /// Whether processes the container's init left behind still hold its cgroup (one that
    /// shares the machine's PID namespace can leave children). Delete only once this is
    /// false: the runtime's own removal of a busy cgroup sleeps in the caller, then gives up.
    pub fn leftovers(&self, handle: &Handle) -> bool {
        handle.cgroup_dir().is_some_and(|dir| {
            fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "populated 1"))
        })
    }

    /// SIGKILL to every process left in the container's cgroup.
    pub fn kill_leftovers(&self, handle: &Handle) {
        let Some(dir) = handle.cgroup_dir() else { return };
        if fs::write(dir.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: one by one.
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse().ok()) {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Remove the container's state and cgroup. Call after its process was reaped. The
    /// state directory goes even when the cgroup cannot: a leftover directory would refuse
    /// every later container of this id.
    pub fn delete(&self, mut handle: Handle) -> Result<()> {
        let r = guarded(&handle.id, "delete", || handle.container.delete(true));
        if r.is_err() {
            let _ = fs::remove_dir_all(self.state_root.join(&handle.id));
        }
        if let Some(p) = &handle.patched_bundle {
            let _ = fs::remove_dir_all(p);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, config: &str) {
        fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        fs::write(dir.join("rootfs/bin/sh"), b"").unwrap();
        fs::write(dir.join("config.json"), config).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-rt-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn broken_json_names_file_and_position() {
        let d = tmp("json");
        bundle(&d, "{\"ociVersion\": \"1.0.2\", \"root\": ");
        let e = load_spec(&d).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn missing_rootfs_and_executable_are_named() {
        let d = tmp("exe");
        bundle(
            &d,
            r#"{"ociVersion":"1.0.2","root":{"path":"nope"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["/bin/sh"]}}"#,
        );
        let e = load_spec(&d).unwrap_err().to_string();
        assert!(e.contains("root.path") && e.contains("nope"), "{e}");
        bundle(
            &d,
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["/bin/missing"]}}"#,
        );
        let e = load_spec(&d).unwrap_err().to_string();
        assert!(e.contains("\"/bin/missing\"") && e.contains("not found"), "{e}");
        bundle(
            &d,
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"env":["PATH=/bin"]}}"#,
        );
        assert!(load_spec(&d).is_ok());
        bundle(
            &d,
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}}"#,
        );
        assert!(load_spec(&d)
            .unwrap_err()
            .to_string()
            .contains("process.args is empty"));
        bundle(
            &d,
            r#"{"ociVersion":"2.0","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]}}"#,
        );
        assert!(load_spec(&d).unwrap_err().to_string().contains("not supported"));
        bundle(
            &d,
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],"env":["PATH=/bin"]},
               "hooks":{"prestart":[{"path":"/bin/sleep","args":["sleep","1000"]}],"poststop":[{"path":"/bin/true"}],"poststart":[]}}"#,
        );
        let e = load_spec(&d).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("hooks.prestart, hooks.poststop not supported"),
            "{e}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
