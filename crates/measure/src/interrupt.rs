//! Ctrl-C and SIGTERM: note the signal so long operations stop at their next check and the
//! RAII guards of [`crate::container`] and the mounts undo everything on the way out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use signal_hook::consts::{SIGINT, SIGTERM};

static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Arc::default);

/// Install the handler for SIGINT and SIGTERM (idempotent: a second call only adds a second
/// handler setting the same flag).
pub fn install() -> std::io::Result<()> {
    for sig in [SIGINT, SIGTERM] {
        // The handler only stores to the flag, which is async-signal-safe.
        signal_hook::flag::register(sig, Arc::clone(&INTERRUPTED))?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
