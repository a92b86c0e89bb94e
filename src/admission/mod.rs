//! Checking TargetApps before they are stored: the pure validation that the
//! admission webhook, `kco validate` and the reconciler will share.
//!
//! Built so far: the schema-aware part — the state query against the target's
//! GraphQL schema, and each trigger's field path and condition against the type of
//! the leaf it reaches ([`query`]). The webhook, defaulting and `kco validate` are
//! still to come.

pub mod query;
pub mod validate;

pub use validate::{Problem, Validator, Verdict};
