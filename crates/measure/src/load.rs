//! Bounded load on loopback: every generator here talks only to 127.0.0.1/::1, stops after a
//! fixed number of requests or a deadline, whichever comes first, and reports what it did.

use erofs_share_daemon::control::send_all;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A load could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{addr}: only loopback addresses may be loaded")]
    NotLoopback { addr: SocketAddr },
    #[error("{addr}: no answer within {secs} s: {last}")]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        last: String,
    },
    #[error("{addr}: the server is up but answers wrongly: {answer}")]
    Wrong { addr: SocketAddr, answer: String },
    #[error("{addr}: {failed} of {total} requests failed; first failure: {first}")]
    Failed {
        addr: SocketAddr,
        failed: u64,
        total: u64,
        first: String,
    },
}

fn loopback(addr: SocketAddr) -> Result<(), LoadError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(LoadError::NotLoopback { addr })
    }
}

/// What a load did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LoadStats {
    pub requests: u64,
    pub seconds: f64,
}

/// A free TCP port on 127.0.0.1 (closed again; good enough for a benchmark's servers).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Why a readiness probe failed.
enum Probe {
    /// Not up yet (refused, reset, timed out): try again.
    Retry(String),
    /// The server answered, wrongly: waiting will not help.
    Wrong(String),
}

impl From<std::io::Error> for Probe {
    fn from(e: std::io::Error) -> Probe {
        Probe::Retry(e.to_string())
    }
}

/// Poll `probe` until it succeeds, answers wrongly, `timeout` passes or `stop` says so.
fn wait_until(
    addr: SocketAddr,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
    probe: impl Fn() -> Result<(), Probe>,
) -> Result<(), LoadError> {
    loopback(addr)?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(()) => return Ok(()),
            Err(Probe::Wrong(e)) => {
                return Err(LoadError::Wrong { addr, answer: e });
            }
            Err(Probe::Retry(e)) => e,
        };
        if stop() || Instant::now() >= deadline {
            return Err(LoadError::NotReady {
                addr,
                secs: timeout.as_secs(),
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until a Redis server answers PING with PONG.
pub fn wait_redis(
    addr: SocketAddr,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), LoadError> {
    wait_until(addr, timeout, stop, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        send_all(&s, b"PING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        if &buf == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(Probe::Wrong(format!(
                "PING answered {:?}",
                String::from_utf8_lossy(&buf)
            )))
        }
    })
}

/// Wait until an HTTP server answers `GET path` with 200.
pub fn wait_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), LoadError> {
    wait_until(addr, timeout, stop, || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        let mut conn = HttpConn::new(s)?;
        match conn.get(path) {
            Ok(_) => Ok(()),
            Err(e @ GetError::Status(_)) => Err(Probe::Wrong(format!("GET {path}: {e}"))),
            Err(GetError::Transport(e)) => Err(Probe::Retry(e)),
        }
    })
}

/// Why one HTTP request failed.
#[derive(Debug)]
enum GetError {
    /// Connecting, sending or reading failed (the server may not be up yet).
    Transport(String),
    /// A complete answer with another status than 200.
    Status(String),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Transport(e) => f.write_str(e),
            GetError::Status(s) => write!(f, "status {s:?}"),
        }
    }
}

/// A keep-alive HTTP/1.1 connection that reads whole responses.
struct HttpConn {
    reader: BufReader<TcpStream>,
}

/// Largest response body we accept (the bench serves small static pages).
const MAX_BODY: u64 = 16 << 20;

impl HttpConn {
    fn new(s: TcpStream) -> std::io::Result<HttpConn> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: BufReader::new(s),
        })
    }

    /// One request; Ok(keep_alive) when the answer is a complete 200 response (keep_alive
    /// false when the server said it closes the connection, e.g. at nginx's
    /// keepalive_requests).
    fn get(&mut self, path: &str) -> Result<bool, GetError> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: erofs-share-bench\r\n\r\n"
        );
        send_all(self.reader.get_ref(), req.as_bytes())
            .map_err(|e| GetError::Transport(format!("send: {e}")))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| GetError::Transport(format!("status line: {e}")))?;
        let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = None;
        let mut keep_alive = true;
        loop {
            let mut h = String::new();
            let n = self
                .reader
                .read_line(&mut h)
                .map_err(|e| GetError::Transport(format!("header: {e}")))?;
            if n == 0 {
                return Err(GetError::Transport("connection closed in headers".into()));
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<u64>().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    keep_alive = !v.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let length =
            length.ok_or_else(|| GetError::Transport("response without Content-Length".into()))?;
        if length > MAX_BODY {
            return Err(GetError::Transport(format!(
                "body of {length} bytes is over {MAX_BODY}"
            )));
        }
        let copied = std::io::copy(&mut (&mut self.reader).take(length), &mut std::io::sink())
            .map_err(|e| GetError::Transport(format!("body: {e}")))?;
        if copied != length {
            return Err(GetError::Transport(format!(
                "body: {copied} of {length} bytes"
            )));
        }
        if status != "200" {
            return Err(GetError::Status(status));
        }
        Ok(keep_alive)
    }
}

/// GET `path` `requests` times over `connections` keep-alive connections, stopping early at
/// `deadline` or when `stop` says so. Fails if any request failed.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    requests: u64,
    connections: usize,
    timeout: Duration,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<LoadStats, LoadError> {
    loopback(addr)?;
    let start = Instant::now();
    let deadline = start + timeout;
    let issued = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_failure = std::sync::Mutex::new(None::<String>);
    let fail = |e: String| {
        failed.fetch_add(1, Ordering::Relaxed);
        let mut f = first_failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    };
    std::thread::scope(|scope| {
        for _ in 0..connections.max(1) {
            scope.spawn(|| {
                let mut conn: Option<HttpConn> = None;
                while issued.fetch_add(1, Ordering::Relaxed) < requests {
                    if stop() || Instant::now() >= deadline {
                        return;
                    }
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                            .and_then(HttpConn::new)
                        {
                            Ok(c) => c,
                            Err(e) => {
                                fail(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    match c.get(path) {
                        Ok(keep_alive) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if keep_alive {
                                conn = Some(c);
                            }
                        }
                        Err(e) => fail(e.to_string()),
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    let done = done.into_inner();
    if failed > 0 {
        return Err(LoadError::Failed {
            addr,
            failed,
            total: failed + done,
            first: first_failure
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_default(),
        });
    }
    Ok(LoadStats {
        requests: done,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A tiny keep-alive server answering every request with a fixed body, `limit` times.
    fn serve(limit: usize) -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut served = 0;
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            while served < limit {
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return served;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .unwrap();
                served += 1;
            }
            served
        });
        (addr, h)
    }

    #[test]
    fn http_load_is_bounded_by_count() {
        let (addr, h) = serve(1000);
        let stats = http_get(addr, "/", 25, 1, Duration::from_secs(10), &|| false).unwrap();
        assert_eq!(stats.requests, 25);
        assert_eq!(h.join().unwrap(), 25);
    }

    #[test]
    fn http_load_reports_failures() {
        let (addr, h) = serve(3);
        let e = http_get(addr, "/", 10, 1, Duration::from_secs(10), &|| false).unwrap_err();
        assert!(matches!(e, LoadError::Failed { .. }), "{e}");
        assert_eq!(h.join().unwrap(), 3);
    }

    #[test]
    fn reconnects_when_the_server_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Two requests per connection, the second answered with "Connection: close".
        let h = std::thread::spawn(move || {
            let mut served = 0;
            for _ in 0..3 {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for i in 0..2 {
                    let mut line = String::new();
                    while line != "\r\n" {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                    }
                    let close = if i == 1 { "Connection: close\r\n" } else { "" };
                    write!(w, "HTTP/1.1 200 OK\r\n{close}Content-Length: 2\r\n\r\nok").unwrap();
                    served += 1;
                }
            }
            served
        });
        let stats = http_get(addr, "/", 6, 1, Duration::from_secs(10), &|| false).unwrap();
        assert_eq!(stats.requests, 6);
        assert_eq!(h.join().unwrap(), 6);
    }

    #[test]
    fn readiness_fails_fast_on_a_wrong_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                r.read_line(&mut line).unwrap();
            }
            let mut w = s;
            w.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let t = Instant::now();
        let e = wait_http(addr, "/", Duration::from_secs(30), &|| false).unwrap_err();
        assert!(matches!(e, LoadError::Wrong { .. }), "{e}");
        assert!(e.to_string().contains("500"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        h.join().unwrap();
    }

    #[test]
    fn only_loopback() {
        let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let e = http_get(addr, "/", 1, 1, Duration::from_secs(1), &|| false).unwrap_err();
        assert!(matches!(e, LoadError::NotLoopback { .. }));
    }
}
