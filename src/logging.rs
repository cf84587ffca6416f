//! The process's log: `tracing` lines on standard error, filtered by the
//! config's `log_level` (or `RUST_LOG` at start), and the one place that
//! filter can be changed while the server runs (a reload).
//!
//! Owns: installing the subscriber and the handle that swaps its filter.
//! Must not touch: what is logged; each component writes its own lines.

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Swaps the installed filter; set once `install` ran (not in tests that
/// run servers in their own process without it).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the log for this process: `RUST_LOG` when set, else
/// `level` (a checked `log_level`; `info` if it does not parse).
pub fn install(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    let _ = FILTER.set(handle);
}

/// Why the filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("not a log filter: {0}")]
    Invalid(#[from] tracing_subscriber::filter::ParseError),
    #[error("the log filter cannot be changed: {0}")]
    Reload(#[from] reload::Error),
}

/// Filters by `level` from now on; nothing to do when no log was
/// installed (a test process).
pub fn set_level(level: &str) -> Result<(), FilterError> {
    let filter = EnvFilter::try_new(level)?;
    if let Some(handle) = FILTER.get() {
        handle.reload(filter)?;
    }
    Ok(())
}
