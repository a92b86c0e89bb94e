//! The two GraphQL-over-WebSocket protocols, as messages: `graphql-transport-ws`
//! (the graphql-ws library's) and the legacy `graphql-ws` (Apollo's
//! subscriptions-transport-ws). Both sides: KCO reads what a server sends and
//! writes what a client sends; the simulator does the reverse. Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which protocol a connection speaks, negotiated by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// `graphql-transport-ws`: subscribe / next / complete, ping / pong.
    TransportWs,
    /// `graphql-ws`: start / data / stop, keep-alive `ka` (subscriptions-transport-ws).
    LegacyWs,
}

impl Protocol {
    /// The `Sec-WebSocket-Protocol` value.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::TransportWs => "graphql-transport-ws",
            Self::LegacyWs => "graphql-ws",
        }
    }

    /// The protocol a `Sec-WebSocket-Protocol` value names.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            "graphql-transport-ws" => Some(Self::TransportWs),
            "graphql-ws" => Some(Self::LegacyWs),
            _ => None,
        }
    }

    /// The first of `offered` (a `Sec-WebSocket-Protocol` header: names separated
    /// by commas) that is one of these protocols.
    pub fn choose(offered: &str) -> Option<Self> {
        offered.split(',').find_map(Self::from_subprotocol)
    }
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ToServer {
    /// Opens the session (optionally with connection parameters).
    Init {
        payload: Option<Value>,
    },
    /// Starts operation `id`.
    Subscribe {
        id: String,
        query: String,
        variables: Option<Value>,
    },
    /// Stops operation `id`.
    Stop {
        id: String,
    },
    Ping,
    Pong,
    /// Ends the session (legacy protocol only; the newer one closes the socket).
    Terminate,
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ToClient {
    Ack,
    /// A keep-alive (`ka` in the legacy protocol, `ping` in the newer one: the
    /// client answers that with `pong`).
    KeepAlive,
    Pong,
    /// One result of operation `id`: `{data, errors}`.
    Next {
        id: String,
        payload: Value,
    },
    /// Operation `id` failed (its GraphQL errors, or a message).
    Error {
        id: String,
        payload: Value,
    },
    /// Operation `id` ended.
    Complete {
        id: String,
    },
    /// The server refused the session (legacy `connection_error`).
    ConnectionError {
        payload: Value,
    },
}

/// A message that is not one of its protocol's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {protocol} message: {why}")]
pub struct Unreadable {
    pub protocol: &'static str,
    pub why: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Transport {
    ConnectionInit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    ConnectionAck {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: Operation,
    },
    Next {
        id: String,
        payload: Value,
    },
    Error {
        id: String,
        payload: Value,
    },
    Complete {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Legacy {
    ConnectionInit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    ConnectionAck {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    ConnectionError {
        #[serde(default)]
        payload: Value,
    },
    ConnectionTerminate,
    #[serde(rename = "ka")]
    KeepAlive,
    Start {
        id: String,
        payload: Operation,
    },
    Stop {
        id: String,
    },
    Data {
        id: String,
        payload: Value,
    },
    Error {
        id: String,
        payload: Value,
    },
    Complete {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variables: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operation_name: Option<String>,
}

fn unreadable(protocol: Protocol, why: impl ToString) -> Unreadable {
    Unreadable {
        protocol: protocol.subprotocol(),
        why: why.to_string(),
    }
}

fn text<T: Serialize>(message: &T) -> String {
    // Plain data with string keys: serialising it cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

impl ToServer {
    /// The message as `protocol` writes it; `None` when `protocol` has no such
    /// message (a client's ping in the legacy protocol).
    pub fn encode(&self, protocol: Protocol) -> Option<String> {
        let operation = |query: &str, variables: &Option<Value>| Operation {
            query: query.to_owned(),
            variables: variables.clone(),
            operation_name: None,
        };
        match protocol {
            Protocol::TransportWs => Some(text(&match self {
                Self::Init { payload } => Transport::ConnectionInit {
                    payload: payload.clone(),
                },
                Self::Subscribe {
                    id,
                    query,
                    variables,
                } => Transport::Subscribe {
                    id: id.clone(),
                    payload: operation(query, variables),
                },
                Self::Stop { id } => Transport::Complete { id: id.clone() },
                Self::Ping => Transport::Ping { payload: None },
                Self::Pong => Transport::Pong { payload: None },
                Self::Terminate => return None,
            })),
            Protocol::LegacyWs => Some(text(&match self {
                Self::Init { payload } => Legacy::ConnectionInit {
                    payload: payload.clone(),
                },
                Self::Subscribe {
                    id,
                    query,
                    variables,
                } => Legacy::Start {
                    id: id.clone(),
                    payload: operation(query, variables),
                },
                Self::Stop { id } => Legacy::Stop { id: id.clone() },
                Self::Terminate => Legacy::ConnectionTerminate,
                Self::Ping | Self::Pong => return None,
            })),
        }
    }

    /// Reads what a client sent (the server's side).
    pub fn decode(protocol: Protocol, message: &str) -> Result<Self, Unreadable> {
        let subscribe = |id: String, op: Operation| Self::Subscribe {
            id,
            query: op.query,
            variables: op.variables,
        };
        match protocol {
            Protocol::TransportWs => {
                match serde_json::from_str(message).map_err(|e| unreadable(protocol, e))? {
                    Transport::ConnectionInit { payload } => Ok(Self::Init { payload }),
                    Transport::Subscribe { id, payload } => Ok(subscribe(id, payload)),
                    Transport::Complete { id } => Ok(Self::Stop { id }),
                    Transport::Ping { .. } => Ok(Self::Ping),
                    Transport::Pong { .. } => Ok(Self::Pong),
                    _ => Err(unreadable(protocol, "a server's message")),
                }
            }
            Protocol::LegacyWs => {
                match serde_json::from_str(message).map_err(|e| unreadable(protocol, e))? {
                    Legacy::ConnectionInit { payload } => Ok(Self::Init { payload }),
                    Legacy::Start { id, payload } => Ok(subscribe(id, payload)),
                    Legacy::Stop { id } => Ok(Self::Stop { id }),
                    Legacy::ConnectionTerminate => Ok(Self::Terminate),
                    _ => Err(unreadable(protocol, "a server's message")),
                }
            }
        }
    }
}

impl ToClient {
    /// The message as `protocol` writes it (the server's side).
    pub fn encode(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::TransportWs => text(&match self.clone() {
                Self::Ack => Transport::ConnectionAck { payload: None },
                Self::KeepAlive => Transport::Ping { payload: None },
                Self::Pong => Transport::Pong { payload: None },
                Self::Next { id, payload } => Transport::Next { id, payload },
                Self::Error { id, payload } => Transport::Error { id, payload },
                Self::Complete { id } => Transport::Complete { id },
                // The newer protocol refuses a session by closing the socket
                // (4403 Forbidden); as a message, it is an error of no operation.
                Self::ConnectionError { payload } => Transport::Error {
                    id: String::new(),
                    payload,
                },
            }),
            Protocol::LegacyWs => text(&match self.clone() {
                Self::Ack => Legacy::ConnectionAck { payload: None },
                Self::KeepAlive | Self::Pong => Legacy::KeepAlive,
                Self::Next { id, payload } => Legacy::Data { id, payload },
                Self::Error { id, payload } => Legacy::Error { id, payload },
                Self::Complete { id } => Legacy::Complete { id },
                Self::ConnectionError { payload } => Legacy::ConnectionError { payload },
            }),
        }
    }

    /// Reads what a server sent (KCO's side).
    pub fn decode(protocol: Protocol, message: &str) -> Result<Self, Unreadable> {
        match protocol {
            Protocol::TransportWs => {
                match serde_json::from_str(message).map_err(|e| unreadable(protocol, e))? {
                    Transport::ConnectionAck { .. } => Ok(Self::Ack),
                    Transport::Ping { .. } => Ok(Self::KeepAlive),
                    Transport::Pong { .. } => Ok(Self::Pong),
                    Transport::Next { id, payload } => Ok(Self::Next { id, payload }),
                    Transport::Error { id, payload } => Ok(Self::Error { id, payload }),
                    Transport::Complete { id } => Ok(Self::Complete { id }),
                    _ => Err(unreadable(protocol, "a client's message")),
                }
            }
            Protocol::LegacyWs => {
                match serde_json::from_str(message).map_err(|e| unreadable(protocol, e))? {
                    Legacy::ConnectionAck { .. } => Ok(Self::Ack),
                    Legacy::KeepAlive => Ok(Self::KeepAlive),
                    Legacy::Data { id, payload } => Ok(Self::Next { id, payload }),
                    Legacy::Error { id, payload } => Ok(Self::Error { id, payload }),
                    Legacy::Complete { id } => Ok(Self::Complete { id }),
                    Legacy::ConnectionError { payload } => Ok(Self::ConnectionError { payload }),
                    _ => Err(unreadable(protocol, "a client's message")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BOTH: [Protocol; 2] = [Protocol::TransportWs, Protocol::LegacyWs];

    #[test]
    fn subprotocols_are_negotiated_by_name() {
        assert_eq!(Protocol::choose("graphql-ws"), Some(Protocol::LegacyWs));
        assert_eq!(
            Protocol::choose("chat, graphql-transport-ws, graphql-ws"),
            Some(Protocol::TransportWs)
        );
        assert_eq!(Protocol::choose("chat,superchat"), None);
        for protocol in BOTH {
            assert_eq!(
                Protocol::from_subprotocol(protocol.subprotocol()),
                Some(protocol)
            );
        }
    }

    #[test]
    fn each_protocol_writes_its_own_message_types() {
        let subscribe = ToServer::Subscribe {
            id: "1".into(),
            query: "subscription { newSyncUpdate }".into(),
            variables: None,
        };
        let as_json =
            |text: Option<String>| -> Value { serde_json::from_str(&text.unwrap()).unwrap() };
        assert_eq!(
            as_json(subscribe.encode(Protocol::TransportWs)),
            json!({"type": "subscribe", "id": "1", "payload": {"query": "subscription { newSyncUpdate }"}})
        );
        assert_eq!(
            as_json(subscribe.encode(Protocol::LegacyWs)),
            json!({"type": "start", "id": "1", "payload": {"query": "subscription { newSyncUpdate }"}})
        );
        let stop = ToServer::Stop { id: "1".into() };
        assert_eq!(
            as_json(stop.encode(Protocol::TransportWs))["type"],
            "complete"
        );
        assert_eq!(as_json(stop.encode(Protocol::LegacyWs))["type"], "stop");
        assert_eq!(ToServer::Ping.encode(Protocol::LegacyWs), None);
        assert_eq!(ToServer::Terminate.encode(Protocol::TransportWs), None);
        let next = ToClient::Next {
            id: "1".into(),
            payload: json!({"data": {"newSyncUpdate": "SYNCED"}}),
        };
        let written: Value = serde_json::from_str(&next.encode(Protocol::LegacyWs)).unwrap();
        assert_eq!(written["type"], "data");
        let written: Value = serde_json::from_str(&next.encode(Protocol::TransportWs)).unwrap();
        assert_eq!(written["type"], "next");
        assert_eq!(
            ToClient::KeepAlive.encode(Protocol::LegacyWs),
            r#"{"type":"ka"}"#
        );
    }

    #[test]
    fn what_one_side_writes_the_other_reads() {
        for protocol in BOTH {
            for message in [
                ToServer::Init {
                    payload: Some(json!({"token": "t"})),
                },
                ToServer::Subscribe {
                    id: "7".into(),
                    query: "subscription { newBlock { stateHash } }".into(),
                    variables: Some(json!({"publicKey": "B62q"})),
                },
                ToServer::Stop { id: "7".into() },
            ] {
                let text = message.encode(protocol).unwrap();
                assert_eq!(ToServer::decode(protocol, &text), Ok(message), "{text}");
            }
            for message in [
                ToClient::Ack,
                ToClient::KeepAlive,
                ToClient::Next {
                    id: "7".into(),
                    payload: json!({"data": {"newSyncUpdate": "CATCHUP"}}),
                },
                ToClient::Error {
                    id: "7".into(),
                    payload: json!([{"message": "no"}]),
                },
                ToClient::Complete { id: "7".into() },
            ] {
                let text = message.encode(protocol);
                assert_eq!(ToClient::decode(protocol, &text), Ok(message), "{text}");
            }
        }
    }

    #[test]
    fn garbage_and_the_other_sides_messages_are_unreadable() {
        for protocol in BOTH {
            for garbage in [
                "",
                "not json",
                "[]",
                r#"{"type":"nonsense"}"#,
                r#"{"type":"next"}"#,
                r#"{"id":"1"}"#,
                "\u{0}\u{1}",
            ] {
                assert!(
                    ToClient::decode(protocol, garbage).is_err(),
                    "{protocol:?}: {garbage:?}"
                );
                assert!(ToServer::decode(protocol, garbage).is_err());
            }
            // A server does not read a server's message, nor a client a client's.
            let ack = ToClient::Ack.encode(protocol);
            assert!(ToServer::decode(protocol, &ack).is_err());
            let init = ToServer::Init { payload: None }.encode(protocol).unwrap();
            assert!(ToClient::decode(protocol, &init).is_err());
        }
    }
}
