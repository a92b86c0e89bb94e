//! High availability with real `kco run` processes on the full cluster
//! (controllers, scheduler and kwok's nodes running beside them): one leader at a time, fast fail-over, polling sharded by namespace and
//! handed off when a replica dies, one action per firing across kills, and hourly
//! action budgets that restarts do not refill.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kco::simulator::{StatePatch, SyncStatus};
use kco::targetapp::TargetApp;
use kube::api::Api;
use serde_json::json;
use support::fixtures;
use support::receiver::Receiver;
use support::replicas::{LEASE, MEMBER_LEASE, RETRY, Replicas, fleet_on};
use support::{Cluster, ControlPlane};

/// The default Lease timing of the replicas under test.
const TIMING: (u64, u64) = (LEASE, MEMBER_LEASE);

/// These tests run on the full cluster: the controllers, the scheduler and kwok
/// add their watches and writes to what the replicas see.
fn cluster() -> &'static ControlPlane {
    &Cluster::shared().cp
}

/// Tests here run one at a time: each runs its own replicas, which watch every
/// namespace of the shared control plane.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kco() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kco"))
}

#[tokio::test]
async fn one_leader_at_a_time_with_fast_failover_on_kill_and_handover_on_sigterm() {
    let _serial = SERIAL.lock().await;
    let mut replicas = Replicas::start_on(cluster(), kco(), "ha-leader", 3, &[], TIMING).await;
    let (first, _) = replicas
        .wait_leader(None, Duration::from_secs(LEASE + 5))
        .await;
    // Stays one for a while (every check asserts at most one).
    for _ in 0..20 {
        let leaders = replicas.leaders().await;
        assert_eq!(leaders, vec![first], "exactly one leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases: Api<Lease> = Api::namespaced(replicas.cp.admin().await, &replicas.lease_ns);
    let holder = leases
        .get(kco::election::LEADER_LEASE)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder, Some(Replicas::name(first)));

    // SIGKILL: the Lease must expire first (duration), then a standby's next try.
    replicas.kill(first, "KILL");
    let (second, took) = replicas
        .wait_leader(Some(first), Duration::from_secs(LEASE + RETRY + 2))
        .await;
    println!("failover after SIGKILL: {took:?}");
    replicas.wait_exit(first).await;

    // SIGTERM: the leader releases the Lease on its way out; a standby leads at once.
    replicas.kill(second, "TERM");
    let (third, took) = replicas
        .wait_leader(Some(second), Duration::from_secs(3))
        .await;
    println!("hand-over after SIGTERM: {took:?}");
    let status = replicas.wait_exit(second).await;
    assert!(status.contains("exit status: 0"), "clean exit: {status}");
    assert_ne!(third, first);
    assert_eq!(replicas.unexpected_exits(), Vec::<String>::new());
}

#[tokio::test]
async fn namespaces_are_polled_by_exactly_one_replica_and_move_when_it_dies() {
    let _serial = SERIAL.lock().await;
    let fleet = fleet_on(
        cluster(),
        "ha-shard",
        30,
        |_| json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}),
    )
    .await;
    let mut replicas =
        Replicas::start_on(cluster(), kco(), "ha-shard-leases", 3, &[], TIMING).await;

    // Settle (every member sees every other), then watch for 3 s.
    tokio::time::sleep(Duration::from_secs(MEMBER_LEASE)).await;
    let seen = fleet.pollers(Duration::from_secs(3)).await;
    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for (ns, pollers) in &seen {
        assert_eq!(pollers.len(), 1, "{ns} polled by {pollers:?}");
        *share
            .entry(pollers.iter().next().unwrap().clone())
            .or_default() += 1;
    }
    println!("namespaces per replica with 3 replicas: {share:?}");
    assert_eq!(share.len(), 3, "every replica polls a share: {share:?}");
    // /stats agrees with what the nodes saw.
    for i in 0..3 {
        let stats = replicas.stats(i).await.unwrap();
        // (Other tests of this binary leave TargetApps in their own namespaces.)
        let owned: BTreeSet<String> =
            serde_json::from_value::<BTreeSet<String>>(stats["ownedNamespaces"].clone())
                .unwrap()
                .into_iter()
                .filter(|ns| fleet.nodes.contains_key(ns))
                .collect();
        let polled: BTreeSet<String> = seen
            .iter()
            .filter(|(_, p)| p.contains(&Replicas::name(i)))
            .map(|(ns, _)| ns.clone())
            .collect();
        assert_eq!(owned, polled, "kco-{i}");
    }
    // TargetApp status names the replica that polls it.
    let client = replicas.cp.admin().await;
    // (The owner writes it when it starts polling: on a busy apiserver that write
    // can land a moment after the first polls.)
    let (ns, pollers) = seen.iter().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = Api::<TargetApp>::namespaced(client.clone(), ns)
            .get("mina")
            .await
            .unwrap()
            .status
            .unwrap();
        if status.shard.as_ref() == pollers.iter().next() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status.shard {:?}, polled by {pollers:?}",
            status.shard
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Kill one replica: its namespaces are polled again within the hand-off time
    // (membership Lease duration + a renew period), by exactly one replica each.
    let victim = share.keys().next().unwrap().clone();
    let index: usize = victim.trim_start_matches("kco-").parse().unwrap();
    let killed_at = Instant::now();
    replicas.kill(index, "KILL");
    replicas.wait_exit(index).await;
    let orphans: BTreeSet<String> = seen
        .iter()
        .filter(|(_, p)| p.contains(&victim))
        .map(|(ns, _)| ns.clone())
        .collect();
    loop {
        let now = fleet.pollers(Duration::from_millis(1500)).await;
        let covered = orphans
            .iter()
            .all(|ns| now[ns].len() == 1 && !now[ns].contains(&victim));
        if covered {
            println!(
                "hand-off of {} namespaces after SIGKILL: {:?}",
                orphans.len(),
                killed_at.elapsed()
            );
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(MEMBER_LEASE + 6),
            "the dead replica's namespaces were not taken over: {now:?}"
        );
    }
    let now = fleet.pollers(Duration::from_secs(2)).await;
    for (ns, pollers) in &now {
        assert_eq!(
            pollers.len(),
            1,
            "{ns} polled by {pollers:?} after the hand-off"
        );
    }

    // Start it again: its share comes back to it.
    replicas.spawn(index);
    replicas.wait_ready(index).await;
    tokio::time::sleep(Duration::from_secs(MEMBER_LEASE)).await;
    let back = fleet.pollers(Duration::from_secs(3)).await;
    let returned = back.values().filter(|p| p.contains(&victim)).count();
    assert_eq!(returned, orphans.len(), "load spreads back: {back:?}");
    for (ns, pollers) in &back {
        assert_eq!(pollers.len(), 1, "{ns} polled by {pollers:?}");
    }
    assert_eq!(replicas.unexpected_exits(), Vec::<String>::new());
}

#[tokio::test]
async fn kills_and_restarts_never_duplicate_or_miss_an_action() {
    let _serial = SERIAL.lock().await;
    let client = cluster().admin().await;
    let (receiver, fleet, mut replicas) = webhook_fleet(
        "ha-actions",
        |_| json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}),
        "daemonStatus.syncStatus",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(MEMBER_LEASE)).await;

    // Flip every node between SYNCED and CATCHUP every 3 s while a replica is
    // killed and restarted each time: every turn to CATCHUP is one firing.
    let states = [SyncStatus::Synced, SyncStatus::Catchup];
    let mut flips = 0usize;
    for cycle in 0..20 {
        flips += flip_all(&fleet, states[(cycle + 1) % 2]).await;
        let victim = fastrand::usize(..3);
        let signal = if cycle % 2 == 0 { "KILL" } else { "TERM" };
        replicas.kill(victim, signal);
        replicas.wait_exit(victim).await;
        replicas.spawn(victim);
        replicas.wait_ready(victim).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // A replica asked to stop finishes the firings it has under way: the receiver
    // answers slowly, so they are still under way when the replicas taking its
    // namespaces over poll and see the condition hold. Those leave the firings
    // to it rather than resume them (which would send them twice, same key).
    receiver.answer_after(Duration::from_secs(6));
    let before = receiver.count();
    flips += flip_all(&fleet, SyncStatus::Catchup).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.count() < before + fleet.nodes.len() {
        assert!(Instant::now() < deadline, "the firings were not sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = fleet.nodes.keys().next().unwrap();
    let app = Api::<TargetApp>::namespaced(client.clone(), first)
        .get("mina")
        .await
        .unwrap();
    let firings = app.status.unwrap_or_default().firings;
    let acting = firings.iter().max_by_key(|f| f.time.0).unwrap();
    let victim = acting.by.as_deref().unwrap().strip_prefix("kco-").unwrap();
    let victim: usize = victim.parse().unwrap();
    replicas.kill(victim, "TERM");
    let exit = replicas.wait_exit(victim).await;
    println!("kco-{victim} stopped with its firings under way ({exit})");
    receiver.answer_after(Duration::ZERO);

    let keys = deliveries(&receiver, flips).await;
    let duplicates: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{flips} flips, {} distinct deliveries, {} duplicates",
        keys.len(),
        duplicates.len()
    );
    assert_eq!(
        duplicates,
        Vec::<(&String, &usize)>::new(),
        "no duplicate deliveries"
    );
    if keys.len() != flips {
        // What the replicas said about the firings they did not deliver.
        let mut said = Vec::new();
        for ns in fleet.nodes.keys() {
            let events: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(client.clone(), ns);
            for e in events.list(&Default::default()).await.unwrap().items {
                let reason = e.reason.clone().unwrap_or_default();
                if reason.starts_with("Action") || reason == "TriggerFired" {
                    said.push(format!(
                        "{ns} {reason} x{}: {}",
                        e.deprecated_count.unwrap_or(1),
                        e.note.unwrap_or_default()
                    ));
                }
            }
        }
        panic!(
            "{} deliveries for {flips} firings:\n{}",
            keys.len(),
            said.join("\n")
        );
    }
    assert_eq!(replicas.unexpected_exits(), Vec::<String>::new());
}

/// TargetApps with subscriptions whose namespaces move to replicas that join:
/// the new owner subscribes before the old one lets go, so nodes that flip
/// through the hand-over fire once per flip — none missed in a gap between the
/// two, none twice in their overlap (the fence) — and the old owner's
/// connections close once the new one holds them. The same when a replica is
/// stopped: it hands its subscriptions over before it exits.
#[tokio::test]
async fn subscriptions_are_handed_over_before_they_are_let_go() {
    let _serial = SERIAL.lock().await;
    let client = cluster().admin().await;
    let (receiver, fleet, mut replicas) = webhook_fleet(
        "ha-push",
        |_| {
            json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 300,
               "subscriptions": [{"query": "subscription { newSyncUpdate }"}]})
        },
        "@newSyncUpdate",
    )
    .await;
    // kco-0 alone holds every namespace, subscribed to every node.
    for i in [1, 2] {
        replicas.kill(i, "TERM");
        replicas.wait_exit(i).await;
    }
    let subscribed_by = |owner: &'static str| {
        let client = client.clone();
        let namespaces: Vec<String> = fleet.nodes.keys().cloned().collect();
        async move {
            let mut all = true;
            for ns in &namespaces {
                let status = Api::<TargetApp>::namespaced(client.clone(), ns)
                    .get("mina")
                    .await
                    .unwrap()
                    .status
                    .unwrap_or_default();
                all &= status.shard.as_deref() == Some(owner)
                    && status.targets.first().and_then(|t| t.subscriptions)
                        == Some(kco::targetapp::SubscriptionState::Subscribed);
            }
            all
        }
    };
    let deadline = Instant::now() + Duration::from_secs(MEMBER_LEASE * 3 + 20);
    while !subscribed_by("kco-0").await {
        assert!(
            Instant::now() < deadline,
            "kco-0 never held every namespace"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Two replicas join and take their shares, while every node flips between
    // SYNCED and CATCHUP every second: every turn to CATCHUP is one firing.
    replicas.spawn(1);
    replicas.spawn(2);
    let mut flips = flip_every_second(&fleet, 16).await;
    replicas.wait_ready(1).await;
    replicas.wait_ready(2).await;
    assert_each_delivered_once(&receiver, flips, "through the hand-over").await;

    // Every replica holds a share, and each node is left with one subscriber:
    // the old owner let go once the new one held it (a Mina daemon notices a
    // closed subscriber when it next writes: a reorganization is announced).
    let deadline = Instant::now() + HANDOVER_WAIT;
    loop {
        let mut counts = Vec::new();
        for addr in fleet.nodes.values() {
            fleet
                .sim
                .announce(*addr, kco::simulator::Announce::Reorganization)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for addr in fleet.nodes.values() {
            counts.push(fleet.sim.node(*addr).await.unwrap().subscribers);
        }
        if counts.iter().all(|n| *n == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers per node: {counts:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut owners = BTreeSet::new();
    for ns in fleet.nodes.keys() {
        let status = Api::<TargetApp>::namespaced(client.clone(), ns)
            .get("mina")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        owners.extend(status.shard);
    }
    assert!(owners.len() > 1, "the namespaces moved: {owners:?}");

    // A replica asked to stop (SIGTERM, as Kubernetes stops a pod) leaves the
    // shard first and lets go of each subscription only once its new owner
    // holds it: flips on while it stops are each delivered once.
    let stopping = owners
        .iter()
        .find_map(|o| o.strip_prefix("kco-")?.parse::<usize>().ok())
        .unwrap();
    replicas.kill(stopping, "TERM");
    flips += flip_every_second(&fleet, 10).await;
    let exit = replicas.wait_exit(stopping).await;
    let what = format!("while kco-{stopping} stopped ({exit})");
    assert_each_delivered_once(&receiver, flips, &what).await;
    assert_eq!(replicas.unexpected_exits(), Vec::<String>::new());
}

/// How long the old owner may hold handed-over subscriptions (30 s, judged every
/// 10 s), and a margin.
const HANDOVER_WAIT: Duration = Duration::from_secs(45);

/// A tenant firing far beyond `maxActionsPerHour` while replicas are killed and
/// restarted (each restart used to start a full budget): the actions delivered
/// never exceed the budget, which the ledger Lease counts for every replica.
#[tokio::test]
async fn an_hourly_action_budget_holds_through_kills_and_restarts() {
    let _serial = SERIAL.lock().await;
    const BUDGET: usize = 5;
    let receiver_ip = IpAddr::V4(fixtures::loopback_ip());
    let receiver = Receiver::start(receiver_ip, "hooks.example.com").await;
    let url = format!("https://hooks.example.com:{}/kco", receiver.addr.port());
    let cp = cluster();
    let client = cp.admin().await;
    let fleet = fleet_on(cluster(), "ha-budget", 4, |_| {
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
               "serviceAccountName": "kco-actions",
               "actions": [{"name": "flip", "action": "webhook", "cooldown": "0s",
                            "parameters": {"url": url, "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}},
                            "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "CATCHUP"}}]})
    })
    .await;
    // One tenant over the four namespaces, with its budget.
    let tenant = format!("budget-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in fleet.nodes.keys() {
        grant_webhook_rights(cp, &client, ns, &receiver.ca_pem).await;
        namespaces
            .patch(
                ns,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"tenant": tenant}}})),
            )
            .await
            .unwrap();
    }
    let quotas: Api<kco::tenancy::TenantQuota> = Api::all(client.clone());
    let quota: kco::tenancy::TenantQuota = serde_json::from_value(json!({
        "metadata": {"name": tenant},
        "spec": {"namespaceSelector": {"matchLabels": {"tenant": tenant}},
                 "maxActionsPerHour": BUDGET}
    }))
    .unwrap();
    quotas.create(&Default::default(), &quota).await.unwrap();
    let cidr = format!("{receiver_ip}/32");
    let resolve = format!("hooks.example.com={receiver_ip}");
    let mut replicas = Replicas::start_on(
        cluster(),
        kco(),
        "ha-budget-leases",
        3,
        &["--endpoint-allowed-cidrs", &cidr, "--resolve", &resolve],
        TIMING,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(MEMBER_LEASE)).await;

    // Every node turns CATCHUP every other cycle (4 firings each time), and a
    // replica is killed (or stopped) and restarted every cycle.
    let states = [SyncStatus::Synced, SyncStatus::Catchup];
    let mut firings = 0usize;
    for cycle in 0..12 {
        firings += flip_all(&fleet, states[(cycle + 1) % 2]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = fastrand::usize(..3);
        replicas.kill(victim, if cycle % 2 == 0 { "KILL" } else { "TERM" });
        replicas.wait_exit(victim).await;
        replicas.spawn(victim);
        replicas.wait_ready(victim).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let delivered: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &replicas.lease_ns);
    let ledger = leases
        .get(&kco::tenancy::ledger::lease_name(&format!(
            "quota/{tenant}"
        )))
        .await
        .unwrap();
    let times: Vec<i64> = serde_json::from_str(
        &ledger.metadata.annotations.unwrap()[kco::tenancy::ledger::TIMES_ANNOTATION],
    )
    .unwrap();
    println!(
        "{firings} firings, budget {BUDGET}: {} actions delivered, {} slots in the ledger",
        delivered.len(),
        times.len()
    );
    quotas.delete(&tenant, &Default::default()).await.unwrap();
    assert!(
        firings > 3 * BUDGET,
        "the tenant fired far beyond its budget"
    );
    assert!(
        delivered.len() <= BUDGET,
        "{} actions in the hour, budget {BUDGET}",
        delivered.len()
    );
    assert!(
        times.len() <= BUDGET && times.len() >= delivered.len(),
        "the ledger counts every action and no more than the budget: {times:?}"
    );
    assert!(
        delivered.len() >= 2,
        "the budget is spent on actions, not lost to the restarts: {}",
        delivered.len()
    );
    assert_eq!(replicas.unexpected_exits(), Vec::<String>::new());
}

/// The tenant side of the webhook action in `ns`: the action account, its rights
/// on the CA Secret, and the Secret.
/// `/readyz` follows the apiserver: a replica that cannot reach it says why and
/// leaves the webhook Service; when it answers again, so does the replica.
/// `/healthz` (the runtime's watchdog) stays ok throughout: losing the apiserver
/// is no reason to restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_apiserver_and_liveness_does_not() {
    // A control plane of its own: its apiserver is stopped here.
    let cp: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start(support::Mode::Bare).await.unwrap(),
    ));
    let replicas = Replicas::start_on(cp, kco(), "readyz", 1, &[], (LEASE, MEMBER_LEASE)).await;
    assert_eq!(
        replicas.admin_get(0, "/readyz").await,
        Some((200, "ok\n".to_owned()))
    );
    let restart = tokio::spawn(async move { cp.restart_apiserver(Duration::from_secs(30)).await });
    let deadline = Instant::now() + Duration::from_secs(40);
    let unready = loop {
        let (status, body) = replicas.admin_get(0, "/readyz").await.unwrap();
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "still ready without an apiserver"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        unready.contains("the apiserver has not answered for"),
        "{unready}"
    );
    assert_eq!(
        replicas.admin_get(0, "/healthz").await,
        Some((200, "ok\n".to_owned())),
        "alive without the apiserver"
    );
    restart.await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match replicas.admin_get(0, "/readyz").await {
            Some((200, _)) => break,
            other => assert!(Instant::now() < deadline, "not ready again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        replicas.admin_get(0, "/healthz").await,
        Some((200, "ok\n".to_owned()))
    );
}

async fn grant_webhook_rights(cp: &ControlPlane, client: &kube::Client, ns: &str, ca: &str) {
    let manifests = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: kco-actions, namespace: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: kco-actions, namespace: {ns}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [secrets], resourceNames: [kco-webhook-ca], verbs: [get]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: kco-actions, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: kco-actions}}\n\
         subjects: [{{kind: ServiceAccount, name: kco-actions, namespace: {ns}}}]\n"
    );
    let file = cp.dir.join(format!("{ns}-actions.yaml"));
    std::fs::write(&file, manifests).unwrap();
    cp.apply(&file, &[]);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "kco-webhook-ca"}, "stringData": {"ca.crt": ca}
    }))
    .unwrap();
    secrets.create(&Default::default(), &secret).await.unwrap();
}

/// Six namespaces, each with a node and a TargetApp `mina` (`spec`, plus a rule
/// `flip` that calls a webhook when `field` equals `CATCHUP`), a receiver that
/// counts the webhook's deliveries, and three replicas allowed to reach it.
async fn webhook_fleet(
    prefix: &'static str,
    spec: impl Fn(&str) -> serde_json::Value,
    field: &str,
) -> (Receiver, support::replicas::Fleet, Replicas) {
    let receiver_ip = IpAddr::V4(fixtures::loopback_ip());
    let receiver = Receiver::start(receiver_ip, "hooks.example.com").await;
    let url = format!("https://hooks.example.com:{}/kco", receiver.addr.port());
    let cp = cluster();
    let client = cp.admin().await;
    let fleet = fleet_on(cp, prefix, 6, |ns| {
        let mut spec = spec(ns);
        spec["serviceAccountName"] = json!("kco-actions");
        spec["actions"] = json!([{"name": "flip", "action": "webhook", "cooldown": "0s",
            "parameters": {"url": url, "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}},
            "trigger": {"field": field, "condition": "equals", "value": "CATCHUP"}}]);
        spec
    })
    .await;
    for ns in fleet.nodes.keys() {
        grant_webhook_rights(cp, &client, ns, &receiver.ca_pem).await;
    }
    let cidr = format!("{receiver_ip}/32");
    let resolve = format!("hooks.example.com={receiver_ip}");
    let replicas = Replicas::start_on(
        cp,
        kco(),
        &format!("{prefix}-leases"),
        3,
        &["--endpoint-allowed-cidrs", &cidr, "--resolve", &resolve],
        TIMING,
    )
    .await;
    (receiver, fleet, replicas)
}

/// Sets every node of `fleet` to `state`; the firings that makes (one per node
/// turned to CATCHUP).
async fn flip_all(fleet: &support::replicas::Fleet, state: SyncStatus) -> usize {
    for addr in fleet.nodes.values() {
        let patch = StatePatch {
            sync_status: Some(state),
            ..StatePatch::default()
        };
        fleet.sim.patch_state(*addr, patch).await.unwrap();
    }
    if state == SyncStatus::Catchup {
        fleet.nodes.len()
    } else {
        0
    }
}

/// Flips every node of `fleet` between SYNCED and CATCHUP `cycles` times, a
/// second apart; the firings that makes.
async fn flip_every_second(fleet: &support::replicas::Fleet, cycles: usize) -> usize {
    let states = [SyncStatus::Synced, SyncStatus::Catchup];
    let mut flips = 0;
    for cycle in 0..cycles {
        flips += flip_all(fleet, states[(cycle + 1) % 2]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    flips
}

/// Fails unless `receiver` got one delivery per firing: none missed, none twice.
async fn assert_each_delivered_once(receiver: &Receiver, flips: usize, what: &str) {
    let keys = deliveries(receiver, flips).await;
    let duplicates: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{flips} flips {what}: {} distinct deliveries, {} duplicates",
        keys.len(),
        duplicates.len()
    );
    assert_eq!(
        duplicates,
        Vec::<(&String, &usize)>::new(),
        "no duplicates {what}"
    );
    assert_eq!(keys.len(), flips, "no flip missed {what}");
}

/// The receiver's deliveries by idempotency key, once `expected` distinct ones
/// came (or 20 s passed: the last firings land).
async fn deliveries(receiver: &Receiver, expected: usize) -> BTreeMap<String, usize> {
    let count = || {
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        for r in receiver.received() {
            let key = r.headers["idempotency-key"].to_str().unwrap().to_owned();
            *keys.entry(key).or_default() += 1;
        }
        keys
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    count()
}
