//! Watching targets: discovering them, polling them, and turning what they
//! answer into state changes, trigger firings, Events, status and metrics.

pub mod discovery;
pub mod poll;
pub mod state;
pub mod status;
