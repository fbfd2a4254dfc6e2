//! Run an application from a mounted root filesystem the way a container runtime would, and
//! measure its memory.
//!
//! Each process starts in its own session and mount namespace, inside its own memory cgroup,
//! chrooted into the mount with `/proc`, `/dev` (bind) and tmpfs `/tmp` and `/run` mounted on
//! the image's own (read-only) directories. Because those mounts live only in the process's
//! namespace, they vanish with its last process: nothing to unmount on the host.
//!
//! Cleanup is RAII: dropping a [`Cgroup`] kills every process in it (by pid) and removes it;
//! dropping the [`CgroupTree`] removes our parent cgroup. Memory cgroups are v2 where the
//! memory controller is on the unified hierarchy, else v1 (hybrid hosts).

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_bind_recursive, mount_change};
use rustix::process::{Pid, Signal, kill_process};
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Name prefix of every cgroup we create (also how the cleanup test finds leftovers).
pub const CGROUP_PREFIX: &str = "erofs-share-bench-";

/// How long killing a cgroup's processes may take before we give up and say so.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A container or cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no memory cgroup controller: neither cgroup v2 ({v2}) nor v1 ({v1}) offers one")]
    NoMemoryController { v2: String, v1: String },
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{path}: cannot parse {field} (got {got:?})")]
    Parse {
        path: String,
        field: &'static str,
        got: String,
    },
    #[error("container root {root}: {what} is missing (the image must have it)")]
    MissingInRoot { root: String, what: String },
    #[error("cgroup {path}: processes {pids:?} still alive {secs} s after SIGKILL")]
    Unkillable {
        path: String,
        pids: Vec<i32>,
        secs: u64,
    },
    #[error("container {name}: {program} exited with {status}; last output:\n{log}")]
    Exited {
        name: String,
        program: String,
        status: String,
        log: String,
    },
    #[error("container {name}: {program} still running after {secs} s")]
    Timeout {
        name: String,
        program: String,
        secs: u64,
    },
    #[error("interrupted")]
    Interrupted,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.display().to_string(),
        cause: source,
    }
}

/// Which cgroup interface the memory controller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V2,
    V1,
}

/// A memory sample of one cgroup, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// Everything charged (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub current: u64,
    /// Page cache (v2 `file`, v1 `cache`).
    pub file: u64,
    /// Anonymous memory (v2 `anon`, v1 `rss`).
    pub anon: u64,
}

fn controllers_have_memory(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.controllers"))
        .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"))
}

/// Where our cgroups go: the v2 hierarchy with memory, else the v1 memory hierarchy.
pub fn memory_hierarchy() -> Result<(PathBuf, CgroupVersion), ContainerError> {
    for v2 in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let p = Path::new(v2);
        if controllers_have_memory(p) {
            return Ok((p.to_path_buf(), CgroupVersion::V2));
        }
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.usage_in_bytes").exists() {
        return Ok((v1.to_path_buf(), CgroupVersion::V1));
    }
    Err(ContainerError::NoMemoryController {
        v2: "/sys/fs/cgroup/cgroup.controllers".into(),
        v1: v1.display().to_string(),
    })
}

/// Our parent cgroup; children are the containers. Removed on drop (after its children).
#[derive(Debug)]
pub struct CgroupTree {
    path: PathBuf,
    version: CgroupVersion,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl CgroupTree {
    /// Create `…/erofs-share-bench-<pid>-<n>` on the memory hierarchy.
    pub fn create() -> Result<CgroupTree, ContainerError> {
        let (base, version) = memory_hierarchy()?;
        let name = format!(
            "{CGROUP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = base.join(name);
        remove_stale(&base, version);
        if version == CgroupVersion::V2 {
            enable_memory(&base)?;
        }
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        let tree = CgroupTree { path, version };
        if version == CgroupVersion::V2 {
            enable_memory(&tree.path)?;
        }
        Ok(tree)
    }

    /// The tree's cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new child cgroup `name`.
    pub fn child(&self, name: &str) -> Result<Cgroup, ContainerError> {
        let path = self.path.join(name);
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Cgroup {
            path,
            version: self.version,
        })
    }
}

/// Remove trees left by a run of ours that was killed outright (its pid is gone): kill what
/// is still in them and remove them. Best effort: a failure leaves them for the next run.
fn remove_stale(base: &Path, version: CgroupVersion) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(CGROUP_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!(
            "erofs-share: removing cgroup {} left by a run that was killed",
            e.path().display()
        );
        drop(CgroupTree {
            path: e.path(),
            version,
        });
    }
}

fn enable_memory(cgroup: &Path) -> Result<(), ContainerError> {
    let ctl = cgroup.join("cgroup.subtree_control");
    let now = std::fs::read_to_string(&ctl).map_err(io_err(&ctl))?;
    if now.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(&ctl, "+memory").map_err(io_err(&ctl))
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Children are dropped first by their owners; remove any left by a panic too.
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let child = Cgroup {
                        path: e.path(),
                        version: self.version,
                    };
                    drop(child);
                }
            }
        }
        if let Err(e) = remove_cgroup_dir(&self.path) {
            eprintln!("erofs-share: removing cgroup {}: {e}", self.path.display());
        }
    }
}

fn remove_cgroup_dir(path: &Path) -> std::io::Result<()> {
    // rmdir fails with EBUSY for a moment after the last process died: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.kind() == std::io::ErrorKind::ResourceBusy => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One memory cgroup. Dropping it kills its processes and removes it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    version: CgroupVersion,
}

impl Cgroup {
    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs`: writing a pid (or 0 for oneself) moves that process here.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids of the processes in it.
    pub fn pids(&self) -> Result<Vec<i32>, ContainerError> {
        let f = self.procs_file();
        let s = match std::fs::read_to_string(&f) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&f)(e)),
        };
        s.lines()
            .map(|l| {
                l.trim().parse().map_err(|_| ContainerError::Parse {
                    path: f.display().to_string(),
                    field: "pid",
                    got: l.to_string(),
                })
            })
            .collect()
    }

    /// Read its memory figures.
    pub fn memory(&self) -> Result<Memory, ContainerError> {
        let (current_file, file_key, anon_key) = match self.version {
            CgroupVersion::V2 => ("memory.current", "file", "anon"),
            CgroupVersion::V1 => ("memory.usage_in_bytes", "cache", "rss"),
        };
        let cf = self.path.join(current_file);
        let cur = std::fs::read_to_string(&cf).map_err(io_err(&cf))?;
        let current = cur.trim().parse().map_err(|_| ContainerError::Parse {
            path: cf.display().to_string(),
            field: "bytes",
            got: cur.trim().to_string(),
        })?;
        let sf = self.path.join("memory.stat");
        let stat = std::fs::read_to_string(&sf).map_err(io_err(&sf))?;
        let field = |key: &'static str| -> Result<u64, ContainerError> {
            let line = stat
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
                .ok_or_else(|| ContainerError::Parse {
                    path: sf.display().to_string(),
                    field: key,
                    got: "no such line".into(),
                })?;
            line.trim().parse().map_err(|_| ContainerError::Parse {
                path: sf.display().to_string(),
                field: key,
                got: line.to_string(),
            })
        };
        Ok(Memory {
            current,
            file: field(file_key)?,
            anon: field(anon_key)?,
        })
    }

    /// SIGKILL every process in it until none is left.
    pub fn kill_all(&self) -> Result<(), ContainerError> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::Unkillable {
                    path: self.path.display().to_string(),
                    pids,
                    secs: KILL_TIMEOUT.as_secs(),
                });
            }
            // A pid that already exited is ESRCH: the next round sees it gone.
            for pid in pids.into_iter().filter_map(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            eprintln!("erofs-share: {e}");
        }
        if let Err(e) = remove_cgroup_dir(&self.path) {
            eprintln!("erofs-share: removing cgroup {}: {e}", self.path.display());
        }
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Short name for messages and logs.
    pub name: String,
    /// The mounted root filesystem.
    pub root: PathBuf,
    /// Program (absolute path inside the root) and arguments.
    pub argv: Vec<String>,
    /// Files to create in the fresh tmpfs `/tmp` or `/run` before the program starts
    /// (absolute paths inside the root).
    pub files: Vec<(String, Vec<u8>)>,
    /// Where to write the program's stdout and stderr on the host.
    pub log: PathBuf,
}

/// Everything the child needs after fork, prepared before it: no allocation in the child.
struct Prepared {
    procs: CString,
    proc_dir: CString,
    dev_dir: CString,
    tmp_dir: CString,
    run_dir: CString,
    root: CString,
    files: Vec<(CString, Vec<u8>)>,
}

fn cpath(p: &Path) -> CString {
    // Paths from the OS never hold NUL; ours are built from them and ASCII names.
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn prepare(spec: &Spec, cgroup: &Cgroup) -> Result<Prepared, ContainerError> {
    let missing = |what: String| ContainerError::MissingInRoot {
        root: spec.root.display().to_string(),
        what,
    };
    for d in ["proc", "dev", "tmp", "run"] {
        if !spec.root.join(d).is_dir() {
            return Err(missing(format!("directory /{d}")));
        }
    }
    let program = spec
        .argv
        .first()
        .ok_or_else(|| missing("a program".into()))?;
    let rel = program.trim_start_matches('/');
    if !program.starts_with('/') || !spec.root.join(rel).exists() {
        return Err(missing(format!("program {program}")));
    }
    let mut files = Vec::new();
    for (path, data) in &spec.files {
        if !(path.starts_with("/tmp/") || path.starts_with("/run/")) || path.contains("/../") {
            return Err(missing(format!(
                "a place for {path} (only files directly in /tmp or /run can be created)"
            )));
        }
        files.push((cpath(&spec.root.join(&path[1..])), data.clone()));
    }
    Ok(Prepared {
        procs: cpath(&cgroup.procs_file()),
        proc_dir: cpath(&spec.root.join("proc")),
        dev_dir: cpath(&spec.root.join("dev")),
        tmp_dir: cpath(&spec.root.join("tmp")),
        run_dir: cpath(&spec.root.join("run")),
        root: cpath(&spec.root),
        files,
    })
}

/// Open `path` (flags added to `O_WRONLY | O_CLOEXEC`) and write all of `data` to it.
fn write_file(path: &CStr, flags: OFlags, data: &[u8]) -> std::io::Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CLOEXEC | flags,
        Mode::from(0o644),
    )?;
    // write_all makes no allocation, even for its short-write error.
    std::fs::File::from(fd).write_all(data)
}

/// Runs in the child between fork and exec: only syscalls on prepared data. Paths go in as
/// `&CStr`, so the wrappers pass them straight through without allocating.
fn enter(p: &Prepared) -> std::io::Result<()> {
    // Own session: a Ctrl-C at the terminal reaches us, and we stop the containers.
    rustix::process::setsid()?;
    write_file(&p.procs, OFlags::empty(), b"0")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    let none: Option<&CStr> = None;
    mount(
        c"proc",
        &*p.proc_dir,
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        none,
    )?;
    mount_bind_recursive(c"/dev", &*p.dev_dir)?;
    let tmpfs = MountFlags::NOSUID | MountFlags::NODEV;
    mount(
        c"tmpfs",
        &*p.tmp_dir,
        c"tmpfs",
        tmpfs,
        c"mode=1777,size=64m",
    )?;
    mount(c"tmpfs", &*p.run_dir, c"tmpfs", tmpfs, c"mode=755,size=16m")?;
    for (path, data) in &p.files {
        write_file(path, OFlags::CREATE | OFlags::EXCL, data)?;
    }
    rustix::process::chroot(&*p.root)?;
    rustix::process::chdir(c"/")?;
    Ok(())
}

/// A running container process. Dropping it kills its cgroup's processes and removes the
/// cgroup (its mounts go with its mount namespace).
#[derive(Debug)]
pub struct Container {
    name: String,
    program: String,
    child: Child,
    log: PathBuf,
    // Declared last: dropped after the child handle, kills everything in the cgroup.
    cgroup: Cgroup,
}

impl Container {
    /// Start `spec` in `cgroup`.
    pub fn start(spec: &Spec, cgroup: Cgroup) -> Result<Container, ContainerError> {
        let prepared = prepare(spec, &cgroup)?;
        let log = std::fs::File::create(&spec.log).map_err(io_err(&spec.log))?;
        let log2 = log.try_clone().map_err(io_err(&spec.log))?;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: `enter` performs only async-signal-safe syscalls on data prepared before
        // fork and allocates nothing (paths are passed as `&CStr`, errors are raw OS errors).
        unsafe {
            cmd.pre_exec(move || enter(&prepared));
        }
        let child = cmd.spawn().map_err(|e| ContainerError::Io {
            path: format!(
                "starting {} in container {} (cgroup, mounts, chroot into {})",
                spec.argv[0],
                spec.name,
                spec.root.display()
            ),
            cause: e,
        })?;
        Ok(Container {
            name: spec.name.clone(),
            program: spec.argv[0].clone(),
            child,
            log: spec.log.clone(),
            cgroup,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pid of the main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Memory charged to its cgroup.
    pub fn memory(&self) -> Result<Memory, ContainerError> {
        self.cgroup.memory()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Error unless the main process is still running.
    pub fn check_running(&mut self) -> Result<(), ContainerError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status.to_string())),
            Err(e) => Err(io_err(Path::new(&self.program))(e)),
        }
    }

    fn exited(&self, status: String) -> ContainerError {
        ContainerError::Exited {
            name: self.name.clone(),
            program: self.program.clone(),
            status,
            log: self.log_tail(),
        }
    }

    /// Wait for the main process to exit successfully within `timeout`, checking `stop`.
    pub fn wait_success(
        &mut self,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), ContainerError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(self.exited(s.to_string())),
                Ok(None) => {}
                Err(e) => return Err(io_err(Path::new(&self.program))(e)),
            }
            if stop() {
                return Err(ContainerError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::Timeout {
                    name: self.name.clone(),
                    program: self.program.clone(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it now: kill every process of the cgroup and reap the main one.
    pub fn stop(mut self) -> Result<(), ContainerError> {
        self.cgroup.kill_all()?;
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.cgroup.kill_all() {
            eprintln!("erofs-share: {e}");
        }
        // Reap the main process so no zombie is left.
        let _ = self.child.wait();
    }
}

/// Last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let start = s.len().saturating_sub(2000);
    let text = String::from_utf8_lossy(&s[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
