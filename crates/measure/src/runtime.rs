//! The runtime benchmark: start each image's application concurrently from its mount, as a
//! container would, drive it with a bounded loopback load, and measure every container's
//! memory at steady state. One [`Setup`] (how the images are mounted) per run; the CLI runs
//! several and prints them side by side.

use crate::container::{Cgroup, CgroupTree, Container, ContainerError, Memory, Spec};
use crate::interrupt;
use crate::load::{self, LoadError, LoadStats};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The runtime benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{setup}: mounting the images: {message}")]
    Mount { setup: String, message: String },
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("container {name}: {message}")]
    App { name: String, message: String },
    #[error("interrupted")]
    Interrupted,
}

fn stop() -> bool {
    interrupt::interrupted()
}

fn check_interrupt() -> Result<(), RuntimeError> {
    if stop() {
        Err(RuntimeError::Interrupted)
    } else {
        Ok(())
    }
}

/// The applications the benchmark knows how to run and load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// `redis-server`, loaded by the image's own `redis-benchmark`.
    Redis,
    /// `nginx` serving its default page, loaded by our HTTP client.
    Nginx,
}

impl std::str::FromStr for App {
    type Err = String;
    fn from_str(s: &str) -> Result<App, String> {
        match s {
            "redis" => Ok(App::Redis),
            "nginx" => Ok(App::Nginx),
            _ => Err(format!("unknown app {s:?}: expected redis or nginx")),
        }
    }
}

impl std::fmt::Display for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            App::Redis => "redis",
            App::Nginx => "nginx",
        })
    }
}

/// The nginx configuration: the image's defaults, but listening on our loopback port and
/// writing only to the container's tmpfs.
fn nginx_conf(port: u16) -> String {
    format!(
        "user www-data;\n\
         worker_processes auto;\n\
         pid /tmp/nginx.pid;\n\
         error_log stderr;\n\
         include /etc/nginx/modules-enabled/*.conf;\n\
         events {{ worker_connections 768; }}\n\
         http {{\n\
         \x20 sendfile on;\n\
         \x20 tcp_nopush on;\n\
         \x20 types_hash_max_size 2048;\n\
         \x20 include /etc/nginx/mime.types;\n\
         \x20 default_type application/octet-stream;\n\
         \x20 access_log off;\n\
         \x20 gzip on;\n\
         \x20 client_body_temp_path /tmp/body;\n\
         \x20 proxy_temp_path /tmp/proxy;\n\
         \x20 fastcgi_temp_path /tmp/fastcgi;\n\
         \x20 uwsgi_temp_path /tmp/uwsgi;\n\
         \x20 scgi_temp_path /tmp/scgi;\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   root /var/www/html;\n\
         \x20   index index.html index.htm index.nginx-debian.html;\n\
         \x20 }}\n\
         }}\n"
    )
}

impl App {
    fn server(&self, name: &str, root: &Path, port: u16, log: PathBuf) -> Spec {
        match self {
            App::Redis => Spec {
                name: name.to_string(),
                root: root.to_path_buf(),
                argv: [
                    "/usr/bin/redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    "/tmp",
                ]
                .map(String::from)
                .to_vec(),
                files: Vec::new(),
                log,
            },
            App::Nginx => Spec {
                name: name.to_string(),
                root: root.to_path_buf(),
                argv: [
                    "/usr/sbin/nginx",
                    "-c",
                    "/tmp/nginx.conf",
                    "-g",
                    "daemon off;",
                ]
                .map(String::from)
                .to_vec(),
                files: vec![("/tmp/nginx.conf".into(), nginx_conf(port).into_bytes())],
                log,
            },
        }
    }

    fn wait_ready(&self, addr: SocketAddr, timeout: Duration) -> Result<(), LoadError> {
        match self {
            App::Redis => load::wait_redis(addr, timeout, &stop),
            App::Nginx => load::wait_http(addr, "/", timeout, &stop),
        }
    }
}

/// How the images are mounted for one run.
pub trait Mounter: std::fmt::Debug {
    /// Row label, e.g. "kernel erofs, loop --direct-io=on".
    fn label(&self) -> String;
    /// Mount every image; dropping the result unmounts them.
    fn mount(&self, images: &[PathBuf]) -> Result<Box<dyn Mounted>, String>;
}

/// Mounted images, unmounted on drop.
pub trait Mounted: std::fmt::Debug {
    /// Mount points, in image order.
    fn roots(&self) -> Vec<PathBuf>;
    /// Forget what the mounts cache outside the page cache (a daemon's copies of image
    /// bytes), so that a read after `drop_caches` is cold. Kernel mounts have nothing more.
    fn drop_own_caches(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The baseline: each image on its own kernel erofs mount through a direct-I/O loop device.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelLoop;

#[derive(Debug)]
struct LoopMounts(Vec<erofs_share_host::LoopMount>);

impl Mounted for LoopMounts {
    fn roots(&self) -> Vec<PathBuf> {
        self.0.iter().map(|m| m.path().to_path_buf()).collect()
    }
}

impl Mounter for KernelLoop {
    fn label(&self) -> String {
        crate::report::KERNEL.into()
    }
    fn mount(&self, images: &[PathBuf]) -> Result<Box<dyn Mounted>, String> {
        let mut mounts = Vec::new();
        for img in images {
            mounts.push(
                erofs_share_host::LoopMount::new(img)
                    .map_err(|e| format!("{}: {e}", img.display()))?,
            );
        }
        Ok(Box::new(LoopMounts(mounts)))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub app: App,
    pub images: Vec<PathBuf>,
    /// Requests per container.
    pub requests: u64,
    /// Limit for each load (and for a server to become ready).
    pub timeout: Duration,
    /// Longest wait for memory to settle after the load.
    pub settle: Duration,
    /// Drop the page cache before each setup (root; makes runs comparable).
    pub drop_caches: bool,
}

/// One container's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerResult {
    pub image: String,
    pub memory: Memory,
    pub load: LoadStats,
}

/// One setup's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetupResult {
    pub setup: String,
    pub containers: Vec<ContainerResult>,
}

impl SetupResult {
    /// Sum over the containers.
    pub fn total(&self) -> Memory {
        let mut t = Memory::default();
        for c in &self.containers {
            t.current += c.memory.current;
            t.file += c.memory.file;
            t.anon += c.memory.anon;
        }
        t
    }
}

/// A started server and the cgroup its load runs in.
#[derive(Debug)]
struct Running {
    server: Container,
    load_cgroup: Option<Cgroup>,
    addr: SocketAddr,
    root: PathBuf,
}

/// How often a setup is repeated when another process dropped the caches during it.
const ATTEMPTS: usize = 4;

/// Run `config` on images mounted by `mounter`: everything started is stopped and removed
/// before this returns, whatever happens. Another process dropping the page cache during the
/// run would take clean pages away from the containers and make their figures too small:
/// such a run is detected ([`crate::page_cache::drops`]) and repeated.
pub fn run_setup(config: &Config, mounter: &dyn Mounter) -> Result<SetupResult, RuntimeError> {
    let drops = || {
        crate::page_cache::drops().map_err(|e| RuntimeError::App {
            name: "page cache".into(),
            message: e.to_string(),
        })
    };
    for _ in 0..ATTEMPTS {
        check_interrupt()?;
        if config.drop_caches {
            erofs_share_host::drop_caches().map_err(|source| RuntimeError::Io {
                what: "dropping caches (/proc/sys/vm/drop_caches)".into(),
                cause: source,
            })?;
        }
        let before = drops()?;
        let result = run_setup_once(config, mounter)?;
        if drops()? == before {
            return Ok(result);
        }
        eprintln!(
            "bench runtime: {}: someone dropped the page cache during the run; repeating",
            mounter.label()
        );
    }
    Err(RuntimeError::App {
        name: mounter.label(),
        message: format!("someone else dropped the page cache during each of {ATTEMPTS} runs"),
    })
}

fn run_setup_once(config: &Config, mounter: &dyn Mounter) -> Result<SetupResult, RuntimeError> {
    let label = mounter.label();
    let logs = tempfile::Builder::new()
        .prefix("erofs-share-bench-logs-")
        .tempdir()
        .map_err(|source| RuntimeError::Io {
            what: "creating a log directory".into(),
            cause: source,
        })?;
    // Drop order (reverse of declaration): containers, then cgroups, then the mounts.
    let mounted = mounter
        .mount(&config.images)
        .map_err(|message| RuntimeError::Mount {
            setup: label.clone(),
            message,
        })?;
    let tree = CgroupTree::create()?;
    let mut running = Vec::new();
    for (i, root) in mounted.roots().iter().enumerate() {
        check_interrupt()?;
        let name = format!("{}-{i}", config.app);
        let port = load::free_port().map_err(|source| RuntimeError::Io {
            what: "finding a free loopback port".into(),
            cause: source,
        })?;
        let spec = config
            .app
            .server(&name, root, port, logs.path().join(format!("{name}.log")));
        let server = Container::start(&spec, tree.child(&name)?)?;
        let load_cgroup = match config.app {
            App::Redis => Some(tree.child(&format!("{name}-load"))?),
            App::Nginx => None,
        };
        running.push(Running {
            server,
            load_cgroup,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            root: root.clone(),
        });
    }
    for r in &mut running {
        if let Err(e) = config.app.wait_ready(r.addr, config.timeout) {
            r.server.check_running()?;
            check_interrupt()?;
            return Err(RuntimeError::App {
                name: r.server.name().to_string(),
                message: format!("{e}; log:\n{}", r.server.log_tail()),
            });
        }
    }
    let loads = run_loads(config, &mut running, logs.path())?;
    check_interrupt()?;
    for r in &mut running {
        r.server.check_running()?;
    }
    let memory = settle(&running, config.settle)?;
    let containers = config
        .images
        .iter()
        .zip(memory)
        .zip(loads)
        .map(|((img, memory), load)| ContainerResult {
            image: img.display().to_string(),
            memory,
            load,
        })
        .collect();
    // Stop in order: servers (and their cgroups), then the tree, then the mounts.
    for r in running {
        r.server.stop()?;
    }
    drop(tree);
    drop(mounted);
    Ok(SetupResult {
        setup: label,
        containers,
    })
}

fn run_loads(
    config: &Config,
    running: &mut [Running],
    logs: &Path,
) -> Result<Vec<LoadStats>, RuntimeError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = running
            .iter_mut()
            .map(|r| scope.spawn(move || one_load(config, r, logs)))
            .collect();
        let mut out = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(s)) => out.push(s),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(RuntimeError::App {
                        name: "load".into(),
                        message: "a load thread panicked".into(),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

fn one_load(config: &Config, r: &mut Running, logs: &Path) -> Result<LoadStats, RuntimeError> {
    let start = Instant::now();
    match config.app {
        App::Nginx => Ok(load::http_get(
            r.addr,
            "/",
            config.requests,
            4,
            config.timeout,
            &stop,
        )?),
        App::Redis => {
            let name = format!("{}-load", r.server.name());
            let cgroup = r.load_cgroup.take().ok_or_else(|| RuntimeError::App {
                name: name.clone(),
                message: "load cgroup used twice".into(),
            })?;
            let spec = Spec {
                name: name.clone(),
                root: r.root.clone(),
                argv: vec![
                    "/usr/bin/redis-benchmark".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    r.addr.port().to_string(),
                    "-n".into(),
                    config.requests.to_string(),
                    "-c".into(),
                    "8".into(),
                    "-q".into(),
                    "-t".into(),
                    "set,get,incr,lpush,lpop".into(),
                ],
                files: Vec::new(),
                log: logs.join(format!("{name}.log")),
            };
            let mut bench = Container::start(&spec, cgroup)?;
            bench.wait_success(config.timeout, &stop)?;
            bench.stop()?;
            Ok(LoadStats {
                // redis-benchmark runs `requests` per test.
                requests: config.requests * 5,
                seconds: start.elapsed().as_secs_f64(),
            })
        }
    }
}

/// Sample memory until the total changes by less than 0.5 % over three samples in a row, or
/// `limit` passes; return the last sample per container.
fn settle(running: &[Running], limit: Duration) -> Result<Vec<Memory>, RuntimeError> {
    let deadline = Instant::now() + limit;
    let mut last_total = None;
    let mut stable = 0;
    loop {
        check_interrupt()?;
        let sample = running
            .iter()
            .map(|r| r.server.memory())
            .collect::<Result<Vec<_>, _>>()?;
        let total: u64 = sample.iter().map(|m| m.current).sum();
        if let Some(prev) = last_total {
            let diff = (total as f64 - prev as f64).abs();
            if diff <= 0.005 * prev as f64 {
                stable += 1;
            } else {
                stable = 0;
            }
        }
        last_total = Some(total);
        if stable >= 3 || Instant::now() >= deadline {
            return Ok(sample);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
