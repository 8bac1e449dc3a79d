//! What the user sees while a command runs, on stderr.
//!
//! On a terminal, a status line shows the work in progress and is replaced as work
//! moves on; finished steps print as lines above it. Elsewhere (CI logs, pipes),
//! only the finished-step lines are printed. `-q` prints only errors; `-v` adds
//! detail lines.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Clone)]
pub struct Progress {
    verbosity: Verbosity,
    tty: bool,
    status: Arc<Mutex<Option<String>>>,
}

impl Progress {
    pub fn new(verbosity: Verbosity) -> Progress {
        Progress {
            verbosity,
            tty: std::io::stderr().is_terminal(),
            status: Arc::new(Mutex::new(None)),
        }
    }

    /// A finished step.
    pub fn line(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            self.print(msg.as_ref());
        }
    }

    /// Detail, shown with `-v`.
    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Verbose {
            self.print(msg.as_ref());
        }
    }

    /// A warning: shown unless `-q`.
    pub fn warn(&self, msg: impl AsRef<str>) {
        if self.verbosity >= Verbosity::Normal {
            self.print(&format!("warning: {}", msg.as_ref()));
        }
    }

    /// Work in progress (terminal only).
    pub fn status(&self, msg: impl Into<String>) {
        if !self.tty || self.verbosity < Verbosity::Normal {
            return;
        }
        let msg = msg.into();
        let mut s = self.status.lock().expect("progress");
        let mut err = std::io::stderr().lock();
        let shown = fit(&msg);
        let _ = write!(err, "\r\x1b[2K{shown}");
        let _ = err.flush();
        *s = Some(msg);
    }

    pub fn clear(&self) {
        if !self.tty {
            return;
        }
        let mut s = self.status.lock().expect("progress");
        if s.take().is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }

    fn print(&self, msg: &str) {
        let s = self.status.lock().expect("progress");
        let mut err = std::io::stderr().lock();
        if self.tty && s.is_some() {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{msg}");
        if let (true, Some(st)) = (self.tty, s.as_ref()) {
            let _ = write!(err, "{}", fit(st));
        }
        let _ = err.flush();
    }
}

/// The status line cut to the terminal's width: a longer line would wrap, and
/// `\r` would then redraw only its last row.
fn fit(msg: &str) -> String {
    msg.chars()
        .take(terminal_width().saturating_sub(1).max(20))
        .collect()
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct owned here; stderr is a terminal.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(80)
    }
}

/// `12.3 MB`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The first 12 hex digits of a digest, for display.
pub fn short(d: &imgbuild_store::Digest) -> &str {
    &d.hex()[..12]
}
