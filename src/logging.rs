//! Structured logging: JSON lines on stderr, filtered by LOG_LEVEL.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a tracing filter (`info`,
/// `kco=debug,kube=warn`, ...); an invalid filter is reported, not ignored.
pub fn init(level: &str, json: bool) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid LOG_LEVEL {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        use std::io::IsTerminal;
        builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A subscriber that is already set (tests calling twice) is fine.
    let _ = result;
    Ok(())
}
