//! Support code shared by KCO's integration tests: the tools the project builds,
//! a real local control plane (etcd + kube-apiserver), the full cluster on top
//! of it (controllers, scheduler, kwok's nodes) and fixtures.
//!
//! Each test binary that needs a control plane shares one ([`ControlPlane::shared`],
//! bare) or one full cluster ([`Cluster::shared`]) and isolates itself by
//! namespace ([`ControlPlane::namespace`]).

#![allow(dead_code, unused_imports)]

pub mod bed;
pub mod cluster;
pub mod controlplane;
pub mod fixtures;
pub mod mina;
pub mod pki;
pub mod process;
pub mod receiver;
pub mod replicas;
pub mod scenario;
pub mod tools;
pub mod webhooks;

pub use cluster::Cluster;
pub use controlplane::{ControlPlane, Mode, User};
pub use tools::Tools;

/// Errors of the harness; each names what failed and, for a process, its last log lines.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Tools(String),
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited during start-up ({status}); its last log lines:\n{log}")]
    Died {
        name: String,
        status: String,
        log: String,
    },
    #[error("{what} not ready after {seconds}s; last error: {last}\n{name} log tail:\n{log}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
        name: String,
        log: String,
    },
    #[error("certificate generation failed: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("kube client set-up failed: {0}")]
    Kube(String),
}

pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let action = action.into();
    move |source| HarnessError::Io { action, source }
}

/// Runs `start` to completion on a runtime of its own, in a thread of its own:
/// what a fixture shared by a whole test binary is started with, so that it does
/// not depend on (or die with) the runtime of the test that happened to start it.
pub(crate) fn start_detached<T, F>(
    what: &str,
    start: impl FnOnce() -> F + Send + 'static,
) -> std::result::Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(start()).map_err(|e| e.to_string())
    })
    .join()
    .unwrap_or_else(|_| Err(format!("{what} start-up panicked")))
}
