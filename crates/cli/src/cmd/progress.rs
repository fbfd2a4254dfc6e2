//! Progress bars for long jobs: drawn on stderr when it is a terminal, hidden otherwise (a
//! log, a pipe, a test), so output meant for machines never carries them.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// What a bar counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Content bytes (mkfs).
    Bytes,
    /// Inodes (fsck, extract, analyze).
    Inodes,
}

/// A bar (or, until its total is known, a spinner) that implements the library's
/// [`erofs::build::Progress`]; hidden unless `show` and stderr is a terminal.
#[derive(Debug)]
pub struct Bar {
    pub bar: ProgressBar,
    unit: Unit,
}

/// True when progress may be drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

impl Bar {
    pub fn new(unit: Unit, show: bool) -> Bar {
        let bar = if show && on_terminal() {
            let b = ProgressBar::new_spinner();
            let t = match unit {
                Unit::Bytes => "{spinner} {bytes} {bytes_per_sec}",
                Unit::Inodes => "{spinner} {pos} inodes {per_sec}",
            };
            b.set_style(ProgressStyle::with_template(t).expect("valid template"));
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        Bar { bar, unit }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl erofs::build::Progress for Bar {
    fn set_total(&self, units: u64) {
        self.bar.set_length(units);
        let t = match self.unit {
            Unit::Bytes => "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            Unit::Inodes => "{bar:40} {pos}/{len} inodes {per_sec} eta {eta}",
        };
        self.bar
            .set_style(ProgressStyle::with_template(t).expect("valid template"));
    }
    fn advance(&self, units: u64) {
        self.bar.inc(units);
    }
}

/// A spinner with the elapsed time for jobs without a count (the benchmarks); hidden unless
/// stderr is a terminal. Lines printed meanwhile go through [`ProgressBar::suspend`].
pub fn spinner(what: &str) -> ProgressBar {
    if !on_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    b.set_message(what.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}
