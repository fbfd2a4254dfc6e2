//! `erofs-share status`: mounts, domains and what sharing saves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use erofs_share_daemon::control::{self, Request};

/// Arguments of `erofs-share status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the daemon's answer as JSON (`{"running": false}` when no daemon runs).
    #[arg(long)]
    pub json: bool,
    /// The daemon's state directory.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// `3 h 02 min`, `5 min 07 s`, `12 s`.
fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", erofs_share_measure::report::mb(b))
}

/// True when `e`, from connecting to the control socket, means no daemon runs there (no
/// socket, or nobody listening on it).
pub fn no_daemon(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let resp = match control::request(&args.state_dir, &Request::Status) {
        Ok(r) => r,
        Err(e) if no_daemon(&e) => {
            if args.json {
                // A monitor gets an answer it can parse either way.
                println!("{}", serde_json::json!({ "running": false }));
                return Ok(ExitCode::SUCCESS);
            }
            bail!("no daemon runs at {}", args.state_dir.display());
        }
        Err(e) => bail!("{}: {e}", control::socket_path(&args.state_dir).display()),
    };
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    let st = resp.status.context("the daemon's answer has no status")?;
    if args.json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = true.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let up = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(st.started);
    println!(
        "daemon pid {} (state {}), up {}, {} takeover{}",
        st.pid,
        st.state_dir.display(),
        uptime(up),
        st.takeovers,
        if st.takeovers == 1 { "" } else { "s" }
    );
    println!("mounts: {}", st.mounts.len());
    for m in &st.mounts {
        let sharing = match (&m.domain, &m.unshared_reason) {
            (Some(d), None) => format!("domain {d}"),
            (_, Some(r)) => format!("unshared: {r}"),
            (None, None) => "unshared".into(),
        };
        let front = match (&m.meta_image, &m.front_reason) {
            (Some(meta), _) => format!("{} front, metadata image {}", m.front, meta.display()),
            (None, Some(why)) => format!("{} front: {why}", m.front),
            (None, None) => format!("{} front", m.front),
        };
        println!(
            "  {} <- {} [{}] ({front}){} opens shared/unshared {}/{}, image read {}{}{}",
            m.mountpoint.display(),
            m.image.display(),
            sharing,
            if m.detached { " (detached)" } else { "" },
            m.shared_opens,
            m.unshared_opens,
            mib(m.image_bytes_read),
            if m.size_mismatches > 0 {
                format!(", {} size mismatches", m.size_mismatches)
            } else {
                String::new()
            },
            if m.read_errors > 0 {
                format!(", {} read errors", m.read_errors)
            } else {
                String::new()
            },
        );
    }
    println!("domains: {}", st.domains.len());
    for d in &st.domains {
        // The overlay front's internal domain for mounts that share nothing.
        let id = if d.id.is_empty() {
            "(unshared files)"
        } else {
            d.id.as_str()
        };
        println!(
            "  {}: {} mounts, {} dedup objects, {} files shared, shared page cache {}, \
             misses served {} ({}), saved vs one copy per mount {}",
            id,
            d.mounts,
            d.objects,
            d.files_shared,
            mib(d.cached_bytes),
            d.misses,
            mib(d.miss_bytes),
            mib(d.saved_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
