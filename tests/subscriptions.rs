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
use serde_json::json;
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

#[tokio::test]
async fn both_protocols_carry_what_a_node_announces() {
    let (sim, node) = node().await;
    for prefer in [Protocol::LegacyWs, Protocol::TransportWs] {
        let mut session = open(&endpoint(node), &wanted(), Limits::default(), prefer)
            .await
            .unwrap();
        assert_eq!(
            session.protocol(),
            prefer,
            "the node speaks what is offered first"
        );
        // Let the node start the subscriptions before it announces.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let sync = if prefer == Protocol::LegacyWs {
            SyncStatus::Catchup
        } else {
            SyncStatus::Synced
        };
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

    // Nothing at all for longer than the idle limit: lost.
    let quiet = Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let mut session = open(&with_header, &wanted(), quiet, Protocol::TransportWs)
        .await
        .unwrap();
    let idle = next(&mut session).await;
    assert!(matches!(idle, Err(Lost::Timeout(_))), "{idle:?}");
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
