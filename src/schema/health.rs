//! KCO's built-in Mina health query, as a typed cynic query checked against the
//! embedded Mina schema at compile time. TargetApps that keep the default
//! `stateQuery` send exactly this selection; user queries are sent as written.

#[cynic::schema("mina")]
mod schema {}

/// `query { daemonStatus { ... } }`
#[derive(cynic::QueryFragment, Debug, Clone, PartialEq)]
#[cynic(graphql_type = "query")]
pub struct HealthQuery {
    pub daemon_status: DaemonStatus,
}

/// The daemon status fields KCO watches by default.
#[derive(cynic::QueryFragment, Debug, Clone, PartialEq)]
pub struct DaemonStatus {
    pub sync_status: SyncStatus,
    pub blockchain_length: Option<i32>,
    pub highest_block_length_received: i32,
    pub highest_unvalidated_block_length_received: i32,
    pub uptime_secs: i32,
    pub peers: Vec<Peer>,
}

#[derive(cynic::QueryFragment, Debug, Clone, PartialEq)]
pub struct Peer {
    pub peer_id: String,
}

/// Mina's sync status.
#[derive(cynic::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Connecting,
    Listening,
    Offline,
    Bootstrap,
    Synced,
    Catchup,
}

/// The health query's text, as cynic renders it.
pub fn query() -> String {
    use cynic::QueryBuilder;
    HealthQuery::build(()).query
}

/// Reads a health query result (`data`) into the typed form.
pub fn decode(data: &serde_json::Value) -> Result<HealthQuery, serde_json::Error> {
    serde::Deserialize::deserialize(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targetapp::DEFAULT_STATE_QUERY;

    /// The selection's field names, in order, ignoring layout and operation names.
    fn fields(query: &str) -> Vec<String> {
        query
            .split(|c: char| c.is_whitespace() || c == '{' || c == '}')
            .filter(|w| !w.is_empty() && *w != "query" && *w != "HealthQuery")
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_default_state_query_is_the_typed_health_query() {
        assert_eq!(fields(DEFAULT_STATE_QUERY), fields(&query()), "{}", query());
    }

    #[test]
    fn a_health_result_decodes_into_typed_fields() {
        let data = serde_json::json!({"daemonStatus": {
            "syncStatus": "CATCHUP", "blockchainLength": 12, "highestBlockLengthReceived": 20,
            "highestUnvalidatedBlockLengthReceived": 21, "uptimeSecs": 5, "peers": [{"peerId": "p"}]}});
        let typed = decode(&data).unwrap();
        assert_eq!(typed.daemon_status.sync_status, SyncStatus::Catchup);
        assert_eq!(typed.daemon_status.blockchain_length, Some(12));
        assert_eq!(typed.daemon_status.peers.len(), 1);
        assert!(decode(&serde_json::json!({"daemonStatus": {"syncStatus": "ASLEEP"}})).is_err());
    }
}
