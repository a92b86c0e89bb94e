//! Subscriptions end to end against the simulator: KCO's WebSocket connection
//! speaks both GraphQL-over-WebSocket protocols, hears what a node announces,
//! and tells why a connection ends (dropped, garbage, not served, refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use kco::simulator::{Announce, Faults, NodeState, Simulator, StatePatch, SyncStatus};
use kco::subscriptions::connection::{Endpoint, Limits, Lost, Pushed, Wanted, open};
use kco::subscriptions::protocol::Protocol;
use kco::targetapp::SubscriptionState;
use serde_json::json;
use support::bed::{Bed, metric};
use support::fixtures;

async fn node() -> (Simulator, SocketAddr) {
    kco::tls::install_crypto_provider();
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = sim
        .add_node((fixtures::loopback_ip(), 0).into(), NodeState::default())
        .await
        .unwrap()
        .address;
    (sim, node)
}

fn endpoint(node: SocketAddr) -> Endpoint {
    Endpoint {
        url: format!("http://{node}/graphql").parse().unwrap(),
        address: node,
        tls: None,
        header: None,
    }
}

fn wanted() -> Vec<Wanted> {
    [
        ("sync", "subscription { newSyncUpdate }"),
        (
            "blocks",
            "subscription { newBlock { stateHash protocolState { consensusState { blockHeight } } } }",
        ),
        ("reorg", "subscription { chainReorganization }"),
    ]
    .into_iter()
    .map(|(name, query)| Wanted {
        name: name.to_owned(),
        query: query.to_owned(),
    })
    .collect()
}

/// The next value pushed, within a few seconds.
async fn next(session: &mut kco::subscriptions::connection::Session) -> Result<Pushed, Lost> {
    tokio::time::timeout(Duration::from_secs(5), session.next())
        .await
        .expect("a value within 5 s")
}

/// Mina's daemon speaks `graphql-ws` and reads nothing more from a connection
/// once a subscription on it streams: KCO opens one connection per subscription
/// to it. A `graphql-transport-ws` server carries them all on one.
#[tokio::test]
async fn both_protocols_carry_what_a_node_announces() {
    for prefer in [Protocol::LegacyWs, Protocol::TransportWs] {
        let (sim, node) = node().await;
        let transport = prefer == Protocol::TransportWs;
        sim.set_faults(
            node,
            Faults {
                graphql_transport_ws: transport,
                ..Faults::default()
            },
        )
        .await
        .unwrap();
        let mut session = open(&endpoint(node), &wanted(), Limits::default(), prefer)
            .await
            .unwrap();
        assert_eq!(session.protocol(), prefer, "the node's protocol");
        let connections = if transport { 1 } else { 3 };
        assert_eq!(session.connections(), connections);
        assert_eq!(
            sim.node(node).await.unwrap().subscribers,
            connections as u64
        );
        // Let the node start the subscriptions before it announces.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let sync = SyncStatus::Catchup;
        sim.patch_state(
            node,
            StatePatch {
                sync_status: Some(sync),
                ..StatePatch::default()
            },
        )
        .await
        .unwrap();
        let pushed = next(&mut session).await.unwrap();
        assert_eq!(
            pushed,
            Pushed {
                name: "sync".into(),
                value: json!(serde_json::to_value(sync).unwrap()),
            }
        );

        let before = sim.node(node).await.unwrap().state.blockchain_length;
        sim.announce(node, Announce::Block).await.unwrap();
        let pushed = next(&mut session).await.unwrap();
        assert_eq!(pushed.name, "blocks");
        assert_eq!(
            pushed.value["protocolState"]["consensusState"]["blockHeight"],
            json!((before + 1).to_string()),
            "{pushed:?}"
        );
        assert_eq!(
            sim.node(node).await.unwrap().state.blockchain_length,
            before + 1
        );

        sim.announce(node, Announce::Reorganization).await.unwrap();
        assert_eq!(
            next(&mut session).await.unwrap(),
            Pushed {
                name: "reorg".into(),
                value: json!("CHANGED"),
            }
        );
        session.close().await;
    }
}

#[tokio::test]
async fn a_dropped_connection_garbage_and_refusals_are_told_apart() {
    let (sim, node) = node().await;
    let open_one =
        |prefer| async move { open(&endpoint(node), &wanted(), Limits::default(), prefer).await };

    let mut session = open_one(Protocol::LegacyWs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.announce(node, Announce::Drop).await.unwrap();
    assert!(
        matches!(next(&mut session).await, Err(Lost::Closed(_))),
        "a dropped connection is a closed one"
    );

    let mut session = open_one(Protocol::TransportWs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.announce(node, Announce::Garbage).await.unwrap();
    let garbage = next(&mut session).await;
    assert!(matches!(garbage, Err(Lost::Protocol(_))), "{garbage:?}");

    // A subscription the schema refuses ends the session, naming it.
    let bad = vec![Wanted {
        name: "nothing".into(),
        query: "subscription { newBlock { nothing } }".into(),
    }];
    let mut session = open(&endpoint(node), &bad, Limits::default(), Protocol::LegacyWs)
        .await
        .unwrap();
    let failed = next(&mut session).await;
    assert!(
        matches!(&failed, Err(Lost::Protocol(why)) if why.contains("subscription nothing failed")),
        "{failed:?}"
    );

    // A daemon that serves no subscriptions, and one behind an authenticating proxy.
    let faults = |f: Faults| sim.set_faults(node, f);
    faults(Faults {
        no_subscriptions: true,
        ..Faults::default()
    })
    .await
    .unwrap();
    let refused = open_one(Protocol::LegacyWs).await.err();
    assert!(
        matches!(&refused, Some(Lost::Unsupported(why)) if why.contains("HTTP 400")),
        "{refused:?}"
    );
    faults(Faults {
        require_header: Some(kco::simulator::RequiredHeader {
            name: "authorization".into(),
            value: "Bearer s3cret".into(),
        }),
        ..Faults::default()
    })
    .await
    .unwrap();
    let refused = open_one(Protocol::LegacyWs).await.err();
    assert!(
        matches!(&refused, Some(Lost::Unsupported(why)) if why.contains("HTTP 401")),
        "{refused:?}"
    );
    let mut with_header = endpoint(node);
    with_header.header = Some((
        "authorization".parse().unwrap(),
        "Bearer s3cret".parse().unwrap(),
    ));
    let mut session = open(
        &with_header,
        &wanted(),
        Limits::default(),
        Protocol::LegacyWs,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.announce(node, Announce::Reorganization).await.unwrap();
    assert_eq!(next(&mut session).await.unwrap().name, "reorg");

    // A node that pushes nothing for longer than the idle limit is kept: a
    // graphql-transport-ws server answers the pings; Mina's daemon answers none
    // while its subscriptions stream, and sends no keep-alive, but is not lost
    // for that (TCP keep-alive watches its connections).
    let quiet = Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    for transport in [true, false] {
        faults(Faults {
            graphql_transport_ws: transport,
            ..Faults::default()
        })
        .await
        .unwrap();
        let mut session = open(&endpoint(node), &wanted(), quiet, Protocol::LegacyWs)
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(1), session.next()).await;
        assert!(waited.is_err(), "still open after 1 s: {waited:?}");
        sim.announce(node, Announce::Reorganization).await.unwrap();
        assert_eq!(next(&mut session).await.unwrap().name, "reorg");
    }
}

/// A `graphql-ws` server that sends keep-alives (`ka`) and then falls silent is
/// lost at the idle limit: its keep-alives came on a schedule.
#[tokio::test]
async fn a_legacy_server_whose_keep_alives_stop_is_lost_at_the_idle_limit() {
    use futures::{SinkExt, StreamExt};
    use kco::subscriptions::protocol::ToClient;
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind((fixtures::loopback_ip(), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    // Names no subprotocol: asked again without an offer, it speaks graphql-ws.
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _init = socket.next().await;
                for message in [ToClient::Ack, ToClient::KeepAlive] {
                    let text = message.encode(Protocol::LegacyWs);
                    let _ = socket.send(Message::text(text)).await;
                }
                // Reads nothing more, sends nothing more.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let quiet = Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let one = &wanted()[..1];
    let mut session = open(&endpoint(address), one, quiet, Protocol::LegacyWs)
        .await
        .unwrap();
    let idle = next(&mut session).await;
    assert!(matches!(idle, Err(Lost::Timeout(_))), "{idle:?}");
    server.abort();
}

/// A `graphql-transport-ws` server that acknowledges the session and then
/// reads and answers nothing: lost once the idle limit passes without an answer
/// to the pings.
#[tokio::test]
async fn a_target_that_answers_nothing_is_lost_at_the_idle_limit() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind((fixtures::loopback_ip(), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let upgrades = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = upgrades.clone();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                // tungstenite's callback type: its error is an HTTP response.
                #[allow(clippy::result_large_err)]
                let named = |_: &Request, mut response: Response| {
                    let transport = Protocol::TransportWs.subprotocol();
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", transport.parse().unwrap());
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(tcp, named).await else {
                    return;
                };
                let Some(Ok(_init)) = socket.next().await else {
                    return;
                };
                let ack = kco::subscriptions::protocol::ToClient::Ack.encode(Protocol::TransportWs);
                let _ = socket
                    .send(tokio_tungstenite::tungstenite::Message::text(ack))
                    .await;
                // Holds the socket and never reads again: no pong, nothing.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let quiet = Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut session = open(&endpoint(address), &wanted(), quiet, Protocol::TransportWs)
        .await
        .unwrap();
    assert_eq!(session.protocol(), Protocol::TransportWs);
    assert_eq!(upgrades.load(std::sync::atomic::Ordering::SeqCst), 1);
    let idle = next(&mut session).await;
    assert!(matches!(idle, Err(Lost::Timeout(_))), "{idle:?}");
    server.abort();
}

#[tokio::test]
async fn a_message_larger_than_the_limit_ends_the_connection() {
    let (sim, node) = node().await;
    let small = Limits {
        max_message_bytes: 64,
        ..Limits::default()
    };
    let mut session = open(&endpoint(node), &wanted(), small, Protocol::LegacyWs)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.announce(node, Announce::Block).await.unwrap();
    let large = next(&mut session).await;
    assert!(
        matches!(&large, Err(Lost::Protocol(why)) if why.contains("too large")),
        "{large:?}"
    );
}

/// A TargetApp polled every 300 s: what its subscriptions push fires its rules
/// at once; a dropped connection is opened again and the target polled at once,
/// so a change made while it was down is seen; a target that serves no
/// subscriptions is polled only, and says so.
#[tokio::test]
async fn pushed_values_fire_rules_at_once_and_a_lost_connection_is_made_good() {
    let mut bed = Bed::new("sub-e2e", 1).await;
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    let height = "@blocks.protocolState.consensusState.blockHeight";
    bed.apply(json!({
        "selector": {"matchLabels": {"app": "mina"}},
        "pollingInterval": 300,
        "reportChanges": ["daemonStatus.syncStatus"],
        "subscriptions": [
            {"name": "blocks", "query": "subscription { newBlock { protocolState { consensusState { blockHeight } } } }"},
            {"query": "subscription { newSyncUpdate }"},
        ],
        "actions": [
            {"name": "new-block", "trigger": {"field": height, "condition": "greaterThan", "value": 0}},
            {"name": "pushed-offline", "trigger": {"field": "@newSyncUpdate", "condition": "equals", "value": "OFFLINE"}},
        ],
        "metrics": [
            {"field": height, "name": "pushed_height"},
            {"field": "$up", "name": "up"},
        ]
    }))
    .await;
    bed.wait_status(30, "1/1 up", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    bed.wait_event(20, "Subscribed", "subscribed to mina-0 (graphql-ws)")
        .await;
    let node = bed.nodes[0];
    // One connection per subscription to a Mina daemon; the status says so.
    assert_eq!(bed.sim.node(node).await.unwrap().subscribers, 2);
    bed.wait_status(10, "subscribed in status", |s| {
        s.targets.first().and_then(|t| t.subscriptions) == Some(SubscriptionState::Subscribed)
    })
    .await;
    assert_eq!(bed.status().await.targets[0].subscription_error, None);
    let polls = bed.sim.node(node).await.unwrap().requests;

    // A new block: the rule on it fires, long before the next poll is due.
    bed.sim.announce(node, Announce::Block).await.unwrap();
    let note = bed
        .wait_event(10, "TriggerFired", "rule new-block fired for mina-0")
        .await;
    assert!(note.contains(height), "{note}");
    // …and the value it pushed is a series at once.
    let pushed = |m: &str| metric(m, "kco_target_pushed_height", &["target=\"mina-0\""]);
    let text = bed
        .wait_metrics(10, "the pushed block height", |m| pushed(m) > 0.0)
        .await;
    assert_eq!(metric(&text, "kco_target_up", &["target=\"mina-0\""]), 1.0);
    // A sync change pushed: its rule fires, and it is reported as a change.
    bed.set_state(0, SyncStatus::Offline).await;
    bed.wait_event(10, "TriggerFired", "rule pushed-offline fired for mina-0")
        .await;
    bed.wait_event(
        10,
        "StateChanged",
        "@newSyncUpdate changed from (absent) to \"OFFLINE\"",
    )
    .await
    .to_string();
    assert_eq!(
        bed.sim.node(node).await.unwrap().requests,
        polls,
        "pushed, not polled"
    );

    // The connection drops, and the node changes while no connection is open:
    // opened again, the target is polled at once, and the change is seen.
    bed.sim.announce(node, Announce::Drop).await.unwrap();
    bed.set_state(0, SyncStatus::Catchup).await;
    bed.wait_event(
        10,
        "SubscriptionLost",
        "subscriptions to mina-0 lost (closed)",
    )
    .await;
    bed.wait_event(15, "Subscribed", "subscribed to mina-0 again")
        .await;
    bed.wait_event(
        10,
        "StateChanged",
        "daemonStatus.syncStatus changed from \"SYNCED\" to \"CATCHUP\"",
    )
    .await;

    // A daemon that serves no subscriptions: polled only, told once.
    bed.sim
        .set_faults(
            node,
            Faults {
                no_subscriptions: true,
                ..Faults::default()
            },
        )
        .await
        .unwrap();
    bed.sim.announce(node, Announce::Drop).await.unwrap();
    let note = bed
        .wait_event(20, "SubscriptionLost", "mina-0 serves no subscriptions")
        .await;
    assert!(
        note.contains("HTTP 400") && note.contains("polling it only"),
        "{note}"
    );
    bed.wait_status(10, "polling only in status", |s| {
        s.targets.first().and_then(|t| t.subscriptions) == Some(SubscriptionState::PollingOnly)
    })
    .await;
    // What was pushed is no longer known; the polled series stay.
    let text = bed.metrics().await;
    assert!(
        !text.contains("kco_target_pushed_height{"),
        "the pushed value's series goes with its subscription:\n{text}"
    );
    assert_eq!(metric(&text, "kco_target_up", &["target=\"mina-0\""]), 1.0);
    let status = bed.status().await;
    assert_eq!(status.targets_ready.as_deref(), Some("1/1"), "{status:?}");
    let why = status.targets[0]
        .subscription_error
        .clone()
        .unwrap_or_default();
    assert!(why.contains("HTTP 400"), "{why}");
}

async fn put_secret(bed: &Bed, name: &str, data: serde_json::Value) {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(bed.client.clone(), &bed.ns);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data
    });
    secrets
        .patch(
            name,
            &kube::api::PatchParams::apply("kco-test").force(),
            &kube::api::Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// A URL target behind TLS (the tenant's CA) and an authenticating proxy is
/// subscribed to as it is polled: its name resolved and judged by the endpoint
/// policy at connect time, the CA and the credential header carried; a name
/// that resolves to a forbidden address is never connected to.
#[tokio::test]
async fn a_url_target_is_subscribed_to_over_tls_with_its_credentials_where_the_policy_allows() {
    let mut bed = Bed::new("sub-tls", 1).await;
    let node = bed.nodes[0];
    let ns = bed.ns.clone();
    bed.start_operator(|s| {
        s.graphql_max_retries = 0;
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(node.ip())];
        s.dns_overrides = vec![
            (format!("node.{ns}.svc"), node.ip()),
            (format!("rebind.{ns}.svc"), "127.0.0.1".parse().unwrap()),
        ];
    })
    .await;
    bed.grant_actions().await;
    let servers = support::pki::Authority::new("mina-servers").unwrap();
    let host = format!("node.{ns}.svc");
    let serving = servers.server(&[&host]).unwrap();
    bed.sim
        .set_faults(
            node,
            Faults {
                tls: Some(kco::simulator::ServeTls {
                    cert_pem: serving.cert.clone(),
                    key_pem: serving.key.clone(),
                    client_ca_pem: None,
                }),
                require_header: Some(kco::simulator::RequiredHeader {
                    name: "authorization".into(),
                    value: "Bearer s3cret".into(),
                }),
                ..Faults::default()
            },
        )
        .await
        .unwrap();
    put_secret(&bed, "kco-graphql-ca", json!({"ca.crt": servers.cert_pem})).await;
    put_secret(&bed, "kco-graphql-auth", json!({"token": "s3cret"})).await;
    let spec = |host: &str| {
        json!({
            "graphqlEndpoint": format!("https://{host}:{}/graphql", node.port()),
            "pollingInterval": 300,
            "serviceAccountName": "kco-actions",
            "auth": {"secretRef": {"name": "kco-graphql-auth", "key": "token"}, "scheme": "Bearer"},
            "tls": {"caSecretRef": {"name": "kco-graphql-ca", "key": "ca.crt"}},
            "subscriptions": [{"query": "subscription { newSyncUpdate }"}],
            "actions": [{"name": "pushed-offline",
                         "trigger": {"field": "@newSyncUpdate", "condition": "equals", "value": "OFFLINE"}}]
        })
    };
    bed.apply(spec(&host)).await;
    let url = format!("https://{host}:{}/graphql", node.port());
    bed.wait_event(
        30,
        "Subscribed",
        &format!("subscribed to {url} (graphql-ws)"),
    )
    .await;
    bed.set_state(0, SyncStatus::Offline).await;
    bed.wait_event(10, "TriggerFired", "rule pushed-offline fired")
        .await;

    // The same name's twin resolves to the apiserver's address: refused at
    // connect time, told once, never reached.
    let rebind = format!("rebind.{ns}.svc");
    bed.apply(spec(&rebind)).await;
    let note = bed
        .wait_event(
            30,
            "SubscriptionLost",
            &format!("subscriptions to https://{rebind}"),
        )
        .await;
    assert!(
        note.contains("not allowed by the tenant's endpoint policy")
            && note.contains("resolves to a forbidden address"),
        "{note}"
    );
}

/// A TenantQuota bounds its tenant's subscription connections: a target beyond
/// them is polled only and says so (QuotaExceeded); another tenant is not
/// touched.
#[tokio::test]
async fn the_tenants_quota_bounds_its_subscription_connections() {
    let mut bed = Bed::new("sub-quota", 2).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(bed.client.clone());
    let label = json!({"metadata": {"labels": {"kco-test-tenant": bed.ns}}});
    namespaces
        .patch(
            &bed.ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&label),
        )
        .await
        .unwrap();
    let quota: kco::tenancy::TenantQuota = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TenantQuota",
        "metadata": {"name": bed.ns},
        "spec": {"namespaceSelector": {"matchLabels": {"kco-test-tenant": bed.ns}},
                 "maxSubscriptionConnections": 1}
    }))
    .unwrap();
    kube::Api::<kco::tenancy::TenantQuota>::all(bed.client.clone())
        .patch(
            &bed.ns,
            &kube::api::PatchParams::apply("kco-test").force(),
            &kube::api::Patch::Apply(&quota),
        )
        .await
        .unwrap();
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    bed.apply(json!({
        "selector": {"matchLabels": {"app": "mina"}},
        "pollingInterval": 300,
        "subscriptions": [{"query": "subscription { newSyncUpdate }"}],
        "actions": [{"name": "pushed-offline",
                     "trigger": {"field": "@newSyncUpdate", "condition": "equals", "value": "OFFLINE"}}]
    }))
    .await;
    let note = bed
        .wait_event(30, "QuotaExceeded", "not opened: TenantQuota")
        .await;
    assert!(
        note.contains("allows 1 subscription connections") && note.contains("polling it only"),
        "{note}"
    );
    let subscribed = bed
        .wait_event(30, "Subscribed", "subscribed to mina-")
        .await;
    // The one subscribed to hears what its node pushes.
    let (pod, node) = if subscribed.contains("mina-0") {
        ("mina-0", 0)
    } else {
        ("mina-1", 1)
    };
    bed.set_state(node, SyncStatus::Offline).await;
    bed.wait_event(
        10,
        "TriggerFired",
        &format!("rule pushed-offline fired for {pod}"),
    )
    .await;
    let events = bed.events("Subscribed").await;
    assert_eq!(events.len(), 1, "one connection: {events:?}");
}
