//! GraphQL subscriptions to targets: values a target pushes over a WebSocket
//! the moment they change (Mina's `newSyncUpdate`, `newBlock`,
//! `chainReorganization`), read by triggers as `@<name>` paths.

pub mod connection;
pub mod protocol;
