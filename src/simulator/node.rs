//! A simulated node's state and faults, and the rules for changing them. Pure:
//! no I/O, no clock reads (callers pass the elapsed time).

use serde::{Deserialize, Serialize};

/// The daemon's sync status, as Mina's `SyncStatus` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    Connecting,
    Listening,
    Offline,
    Bootstrap,
    Synced,
    Catchup,
}

/// What a simulated node reports. Field names are the control API's JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeState {
    pub sync_status: SyncStatus,
    /// Height of the node's best tip.
    pub blockchain_length: u32,
    /// Highest block height the node has received from peers.
    pub highest_block_length_received: u32,
    /// Highest not-yet-validated block height received.
    pub highest_unvalidated_block_length_received: u32,
    /// Number of connected peers; peer ids are derived from the node's address.
    pub peer_count: u32,
    /// Uptime at the moment this state was set; it grows with wall time after that.
    pub uptime_secs: u32,
    /// Reported by the `version` query.
    pub version: String,
    pub chain_id: String,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            sync_status: SyncStatus::Synced,
            blockchain_length: 1000,
            highest_block_length_received: 1000,
            highest_unvalidated_block_length_received: 1000,
            peer_count: 3,
            uptime_secs: 0,
            version: "3.0.0-simulated".to_owned(),
            chain_id: "a7351abc7ddf2ea92d1b38cc8e636c271c1dfd2c081c637f62ebc2af34eb7cc1".to_owned(),
        }
    }
}

/// A partial update of [`NodeState`]: absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatePatch {
    pub sync_status: Option<SyncStatus>,
    pub blockchain_length: Option<u32>,
    pub highest_block_length_received: Option<u32>,
    pub highest_unvalidated_block_length_received: Option<u32>,
    pub peer_count: Option<u32>,
    pub uptime_secs: Option<u32>,
    pub version: Option<String>,
    pub chain_id: Option<String>,
}

/// The most peers a node reports, so that one request cannot ask for a huge answer.
pub const MAX_PEERS: u32 = 10_000;

impl NodeState {
    /// Applies a patch, returning the new state or why the patch is refused.
    pub fn patched(&self, patch: StatePatch) -> Result<NodeState, String> {
        let mut next = self.clone();
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = patch.$field { next.$field = v; })* };
        }
        set!(
            sync_status,
            blockchain_length,
            highest_block_length_received,
            highest_unvalidated_block_length_received,
            peer_count,
            uptime_secs,
            version,
            chain_id
        );
        next.check()?;
        Ok(next)
    }

    /// Checks the invariants the control API enforces.
    pub fn check(&self) -> Result<(), String> {
        if self.peer_count > MAX_PEERS {
            return Err(format!(
                "peerCount {} is above the maximum {MAX_PEERS}",
                self.peer_count
            ));
        }
        Ok(())
    }

    /// Uptime reported `elapsed_secs` after the state was set (saturating at i32::MAX,
    /// the GraphQL Int range).
    pub fn uptime_after(&self, elapsed_secs: u64) -> i32 {
        let total = u64::from(self.uptime_secs).saturating_add(elapsed_secs);
        i32::try_from(total).unwrap_or(i32::MAX)
    }
}

/// Faults a node injects into its GraphQL answers. All off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    /// Delay before answering, in milliseconds.
    pub latency_ms: u64,
    /// Answer with this HTTP status (400-599) and a plain-text body.
    pub http_status: Option<u16>,
    /// Answer with a GraphQL error carrying this message.
    pub graphql_error: Option<String>,
    /// With `graphqlError`: keep the data (a partial result) instead of `data: null`.
    pub partial_data: bool,
    /// Answer 200 with a body that is not valid JSON.
    pub malformed_json: bool,
    /// Answer 200 with a JSON body of exactly this many bytes.
    pub body_bytes: Option<u64>,
    /// Reset the connection (TCP RST) instead of answering.
    pub reset: bool,
    /// Accept the request and never answer, until this fault is cleared.
    pub hang: bool,
    /// Send the answer's body one byte at a time, this many milliseconds apart
    /// (the headers go at once). 0: off.
    pub trickle_ms: u64,
    /// With `trickleMs`: send this many bytes at a time instead of one (a large
    /// body that arrives slowly, holding its reader's memory as it grows).
    pub trickle_bytes: Option<u32>,
    /// Answer 200 with a valid JSON body whose arrays nest this many levels deep.
    pub nested_depth: Option<u32>,
    /// Answer 200 with a JSON body holding bytes that are not UTF-8.
    pub invalid_utf8: bool,
    /// Answer 307 Temporary Redirect to this absolute URL.
    pub redirect_to: Option<String>,
    /// With `httpStatus`: send `Retry-After: <seconds>` (429 and 503 use it).
    pub retry_after_secs: Option<u64>,
    /// Serve HTTPS with a self-signed certificate that no client trusts. Read when a
    /// connection is accepted: connections already open keep their protocol.
    pub untrusted_tls: bool,
    /// Answer 401 to a request that does not carry this header with exactly this
    /// value: a node behind an authenticating proxy.
    pub require_header: Option<RequiredHeader>,
    /// Serve HTTPS with this certificate (read when a connection is accepted),
    /// and with `clientCaPem`, ask for a client certificate that CA signs.
    pub tls: Option<ServeTls>,
    /// Refuse WebSocket upgrades (HTTP 400): a daemon that serves no
    /// subscriptions.
    pub no_subscriptions: bool,
    /// Serve subscriptions as a `graphql-transport-ws` server (the graphql-ws
    /// library) does — the subprotocol named, operations side by side, pings
    /// answered; an upgrade that does not offer it gets 400 — instead of as
    /// Mina's daemon does. Read at the upgrade.
    pub graphql_transport_ws: bool,
}

/// A certificate a node serves, and the CA of the client certificates it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeTls {
    /// PEM certificate chain, the node's own first.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM CA: a client must present a certificate it signs.
    #[serde(default)]
    pub client_ca_pem: Option<String>,
}

/// A header a request must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequiredHeader {
    pub name: String,
    pub value: String,
}

/// The largest latency a node can be told to add (10 minutes).
pub const MAX_LATENCY_MS: u64 = 600_000;

/// The deepest nesting a node can be told to answer with (a 2 MB body).
pub const MAX_NESTED_DEPTH: u32 = 1_000_000;

/// The longest `redirectTo` URL.
pub const MAX_REDIRECT_LEN: usize = 2048;

/// The largest piece of a trickled body.
pub const MAX_TRICKLE_BYTES: u32 = 1024 * 1024;

/// The slowest trickle: one byte a minute.
pub const MAX_TRICKLE_MS: u64 = 60_000;

impl Faults {
    /// Checks that the faults make sense together.
    pub fn check(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            super::server::serving(tls).map_err(|e| format!("tls: {e}"))?;
        }
        if let Some(required) = &self.require_header
            && (axum::http::HeaderName::from_bytes(required.name.as_bytes()).is_err()
                || axum::http::HeaderValue::from_str(&required.value).is_err())
        {
            return Err(format!(
                "requireHeader {:?} is not a header name and value",
                required.name
            ));
        }
        if let Some(status) = self.http_status
            && !(400..=599).contains(&status)
        {
            return Err(format!(
                "httpStatus {status} is not an error status (400-599)"
            ));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!(
                "latencyMs {} is above the maximum {MAX_LATENCY_MS}",
                self.latency_ms
            ));
        }
        if self.partial_data && self.graphql_error.is_none() {
            return Err("partialData needs graphqlError".to_owned());
        }
        if self.retry_after_secs.is_some() && self.http_status.is_none() {
            return Err("retryAfterSecs needs httpStatus".to_owned());
        }
        if self.trickle_ms > MAX_TRICKLE_MS {
            return Err(format!(
                "trickleMs {} is above the maximum {MAX_TRICKLE_MS}",
                self.trickle_ms
            ));
        }
        if let Some(bytes) = self.trickle_bytes
            && !(1..=MAX_TRICKLE_BYTES).contains(&bytes)
        {
            return Err(format!(
                "trickleBytes must be 1..={MAX_TRICKLE_BYTES}, not {bytes}"
            ));
        }
        if let Some(depth) = self.nested_depth
            && !(1..=MAX_NESTED_DEPTH).contains(&depth)
        {
            return Err(format!(
                "nestedDepth {depth} is outside 1..={MAX_NESTED_DEPTH}"
            ));
        }
        if let Some(url) = &self.redirect_to {
            if url.is_empty() || url.len() > MAX_REDIRECT_LEN {
                return Err(format!(
                    "redirectTo must be 1..={MAX_REDIRECT_LEN} characters"
                ));
            }
            if url.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err("redirectTo must be printable ASCII (a header value)".to_owned());
            }
        }
        let answers = [
            self.http_status.is_some(),
            self.malformed_json,
            self.body_bytes.is_some(),
            self.reset,
            self.nested_depth.is_some(),
            self.invalid_utf8,
            self.redirect_to.is_some(),
        ];
        if answers.iter().filter(|on| **on).count() > 1 {
            return Err(
                "at most one of httpStatus, malformedJson, bodyBytes, reset, nestedDepth, invalidUtf8 and redirectTo can be set"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// What the node does with a request, once latency and hanging are over.
    pub fn answer(&self) -> Answer {
        if self.reset {
            Answer::Reset
        } else if let Some(status) = self.http_status {
            match self.retry_after_secs {
                Some(secs) => Answer::RetryAfter(status, secs),
                None => Answer::HttpStatus(status),
            }
        } else if self.malformed_json {
            Answer::MalformedJson
        } else if let Some(bytes) = self.body_bytes {
            Answer::Sized(bytes)
        } else if let Some(depth) = self.nested_depth {
            Answer::Nested(depth)
        } else if self.invalid_utf8 {
            Answer::InvalidUtf8
        } else if let Some(url) = &self.redirect_to {
            Answer::Redirect(url.clone())
        } else {
            match &self.graphql_error {
                Some(message) => Answer::GraphqlError {
                    message: message.clone(),
                    partial: self.partial_data,
                },
                None => Answer::Normal,
            }
        }
    }
}

/// How a node answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Normal,
    GraphqlError {
        message: String,
        partial: bool,
    },
    HttpStatus(u16),
    /// The status, with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    MalformedJson,
    Sized(u64),
    /// A JSON body nested this deep.
    Nested(u32),
    InvalidUtf8,
    /// 307 to this URL.
    Redirect(String),
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_given_fields() {
        let state = NodeState::default();
        let patch: StatePatch =
            serde_json::from_str(r#"{"syncStatus": "CATCHUP", "blockchainLength": 7}"#).unwrap();
        let next = state.patched(patch).unwrap();
        assert_eq!(next.sync_status, SyncStatus::Catchup);
        assert_eq!(next.blockchain_length, 7);
        assert_eq!(next.peer_count, state.peer_count);
        assert_eq!(
            next.highest_block_length_received,
            state.highest_block_length_received
        );
    }

    #[test]
    fn patch_refuses_unknown_fields_values_and_limits() {
        assert!(serde_json::from_str::<StatePatch>(r#"{"syncStatus": "SLEEPY"}"#).is_err());
        assert!(serde_json::from_str::<StatePatch>(r#"{"height": 3}"#).is_err());
        assert!(serde_json::from_str::<StatePatch>(r#"{"blockchainLength": -1}"#).is_err());
        let too_many = StatePatch {
            peer_count: Some(MAX_PEERS + 1),
            ..Default::default()
        };
        assert!(
            NodeState::default()
                .patched(too_many)
                .unwrap_err()
                .contains("peerCount")
        );
    }

    #[test]
    fn uptime_grows_and_saturates() {
        let state = NodeState {
            uptime_secs: 100,
            ..Default::default()
        };
        assert_eq!(state.uptime_after(0), 100);
        assert_eq!(state.uptime_after(25), 125);
        assert_eq!(state.uptime_after(u64::MAX), i32::MAX);
    }

    #[test]
    fn faults_pick_one_answer_and_reject_nonsense() {
        assert_eq!(Faults::default().answer(), Answer::Normal);
        let error = Faults {
            graphql_error: Some("boom".into()),
            partial_data: true,
            ..Default::default()
        };
        assert_eq!(
            error.answer(),
            Answer::GraphqlError {
                message: "boom".into(),
                partial: true
            }
        );
        let status = Faults {
            http_status: Some(503),
            ..Default::default()
        };
        assert!(status.check().is_ok());
        assert_eq!(status.answer(), Answer::HttpStatus(503));
        for bad in [
            Faults {
                http_status: Some(200),
                ..Default::default()
            },
            Faults {
                partial_data: true,
                ..Default::default()
            },
            Faults {
                reset: true,
                malformed_json: true,
                ..Default::default()
            },
            Faults {
                latency_ms: MAX_LATENCY_MS + 1,
                ..Default::default()
            },
            Faults {
                retry_after_secs: Some(3),
                ..Default::default()
            },
            Faults {
                nested_depth: Some(0),
                ..Default::default()
            },
            Faults {
                nested_depth: Some(MAX_NESTED_DEPTH + 1),
                ..Default::default()
            },
            Faults {
                invalid_utf8: true,
                redirect_to: Some("http://x/".into()),
                ..Default::default()
            },
            Faults {
                redirect_to: Some("http://x/\r\nSet-Cookie: a=b".into()),
                ..Default::default()
            },
            Faults {
                trickle_ms: MAX_TRICKLE_MS + 1,
                ..Default::default()
            },
            Faults {
                trickle_ms: 10,
                trickle_bytes: Some(MAX_TRICKLE_BYTES + 1),
                ..Default::default()
            },
            Faults {
                trickle_ms: 10,
                trickle_bytes: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?} should be refused");
        }
        let reset_wins = Faults {
            reset: true,
            graphql_error: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(reset_wins.answer(), Answer::Reset);
        let limited = Faults {
            http_status: Some(429),
            retry_after_secs: Some(3),
            ..Default::default()
        };
        assert!(limited.check().is_ok());
        assert_eq!(limited.answer(), Answer::RetryAfter(429, 3));
        let hostile = Faults {
            nested_depth: Some(500),
            trickle_ms: 10,
            untrusted_tls: true,
            ..Default::default()
        };
        assert!(
            hostile.check().is_ok(),
            "trickle and TLS go with any answer"
        );
        assert_eq!(hostile.answer(), Answer::Nested(500));
    }
}
