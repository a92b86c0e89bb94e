//! KCO library: every behaviour of the `kco` binary lives here, so that tests
//! reach it without spawning the binary.

pub mod actions;
pub mod admin;
pub mod admission;
pub mod cli;
pub mod cluster;
pub mod conditions;
pub mod config;
pub mod crds;
pub mod election;
pub mod events;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod nesting;
pub mod operator;
pub mod preflight;
pub mod probe;
pub mod schema;
pub mod shard;
pub mod shutdown;
/// The Mina daemon simulator (`kco simulate`, the demo and the tests); the
/// operator image is built without it (docs/adr/0009-the-simulator-is-a-feature.md).
#[cfg(feature = "simulator")]
pub mod simulator;
pub mod subscriptions;
pub mod target_metrics;
pub mod targetapp;
pub mod tenancy;
pub mod tls;
pub mod triggers;
pub mod version;
