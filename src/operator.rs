//! `kco run`: the operator process. Connects to the cluster, serves the admin
//! endpoints and monitors TargetApps until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::election::{Election, Leadership};
use crate::metrics::Metrics;
use crate::monitor::{self, Context};
use crate::shard::{Membership, Ownership};
use crate::targetapp::TargetApp;

/// The cluster configuration from `--kubeconfig`, else the usual inference
/// ($KUBECONFIG, ~/.kube/config, in-cluster service account).
pub async fn cluster_config(settings: &Settings) -> anyhow::Result<kube::Config> {
    Ok(match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no cluster configuration: give --kubeconfig, set KUBECONFIG, or run in a pod",
        )?,
    })
}

/// The apiserver's addresses, which no user-supplied URL may reach: the host of
/// the cluster URL (resolved) and, in a pod, the `kubernetes` Service address.
pub async fn apiserver_addresses(config: &kube::Config) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut hosts: Vec<String> = config
        .cluster_url
        .host()
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
        hosts.push(host);
    }
    for host in hosts {
        let host = host.trim_matches(['[', ']']).to_owned();
        match host.parse() {
            Ok(ip) => found.push(ip),
            Err(_) => {
                if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), 443)).await {
                    found.extend(addrs.map(|a| a.ip()));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// A started operator.
pub struct Running {
    /// Where the admin server listens (useful with port 0).
    pub admin_addr: SocketAddr,
    /// Where the admission webhooks listen, when they are on.
    pub webhook_addr: Option<SocketAddr>,
    pub ctx: Arc<Context>,
    /// Cancelled to stop gracefully: this replica leaves the shard, hands its
    /// TargetApps over (those with subscriptions run on until their new owners
    /// hold them, [`monitor::HANDOVER_LIMIT`] at most), then stops as `cancel`
    /// does.
    pub leave: CancellationToken,
    /// Ends when the operator has stopped.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

/// Checks the cluster, binds the admin server and starts monitoring; runs until
/// `cancel` fires.
pub async fn start(
    settings: Settings,
    config: kube::Config,
    cancel: CancellationToken,
) -> anyhow::Result<Running> {
    let client = crate::cluster::client(&config).context("cannot build a Kubernetes client")?;
    check_targetapps_readable(&client, settings.namespace.as_deref()).await?;

    let metrics = Metrics::new().context("cannot register metrics")?;
    let apiserver = crate::tenancy::Apiserver::from(apiserver_addresses(&config).await);
    tokio::spawn(crate::tenancy::services::keep_apiserver_current(
        client.clone(),
        apiserver.clone(),
        cancel.clone(),
    ));
    let mut roles = Roles::new(&client, &settings, &metrics);
    let tenants = crate::tenancy::Tenants::new(settings.default_quota.clone());
    tokio::spawn(tenants.clone().run(client.clone(), cancel.clone()));
    let ctx = Context::new(
        client,
        config,
        settings.clone(),
        metrics,
        apiserver,
        roles.leadership.clone(),
        tenants,
    )
    .context("cannot build the HTTP client")?;
    // Schema ConfigMaps and ServiceAccounts: admission and the monitor's re-check
    // read the same caches.
    tokio::spawn(ctx.caches.clone().run(ctx.client.clone(), cancel.clone()));
    // The Lease renewals tell readiness that the apiserver answers.
    roles.election = roles.election.map(|e| e.reporting_to(ctx.health.clone()));
    roles.membership = roles.membership.map(|m| m.reporting_to(ctx.health.clone()));
    tokio::spawn(watch_health(ctx.clone(), cancel.clone()));
    let webhook_addr = start_webhooks(&ctx, &settings, &cancel).await?;
    let (admin_addr, admin) = serve_admin(&ctx, &settings, &cancel).await?;

    // The lease tasks stop after monitoring has, so that the shard is left (and the
    // leader Lease released) only once this replica no longer polls — unless it
    // leaves first, on purpose, to hand its TargetApps over.
    let leases = CancellationToken::new();
    let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    if let Some(e) = roles.election {
        tasks.push(("leader election", tokio::spawn(e.run(leases.clone()))));
    }
    let mut membership = None;
    if let Some(m) = roles.membership {
        let leave = CancellationToken::new();
        let run = m.run(
            roles.ownership_tx,
            leave.clone(),
            leases.child_token(),
            ctx.listed.clone(),
        );
        membership = Some((leave, tokio::spawn(run)));
    }
    let monitoring = monitor::run(
        ctx.clone(),
        settings.namespace.clone(),
        roles.ownership,
        cancel.clone(),
    );
    let leave = CancellationToken::new();
    let handle = tokio::spawn(until_stopped(
        ctx.clone(),
        monitoring,
        tokio::spawn(admin),
        Tasks {
            leases: tasks,
            membership,
        },
        Stops {
            leave: leave.clone(),
            cancel,
            leases,
        },
    ));
    Ok(Running {
        admin_addr,
        webhook_addr,
        ctx,
        leave,
        handle,
    })
}

/// Fails fast, with the fix in the message, when the CRD is missing or RBAC is wrong.
async fn check_targetapps_readable(
    client: &kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let apps: Api<TargetApp> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    apps.list(&ListParams::default().limit(1))
        .await
        .map_err(|e| match &e {
            kube::Error::Api(status) if status.code == 404 => {
                anyhow::anyhow!(
                    "the TargetApp CRD is not installed: run `kco crds | kubectl apply -f -` ({e})"
                )
            }
            _ => anyhow::anyhow!("cannot list TargetApps: {e}"),
        })?;
    Ok(())
}

/// This replica's roles: leader or not (the Lease), and which namespaces it polls
/// (the shard), with the tasks that keep them, not started yet.
struct Roles {
    election: Option<Election>,
    leadership: Leadership,
    membership: Option<Membership>,
    ownership_tx: watch::Sender<Ownership>,
    ownership: watch::Receiver<Ownership>,
}

impl Roles {
    fn new(client: &kube::Client, settings: &Settings, metrics: &Metrics) -> Self {
        let me = settings.instance.as_str();
        let (election, leadership) = match settings.election {
            Some(timing) => {
                let (election, leadership) = Election::new(
                    client.clone(),
                    &settings.lease_namespace,
                    me,
                    timing,
                    metrics.clone(),
                );
                (Some(election), leadership)
            }
            None => (None, Leadership::never()),
        };
        let (ownership_tx, ownership) = watch::channel(match settings.sharding {
            Some(_) => Ownership::unknown(me),
            None => Ownership::everything(me),
        });
        let membership = settings.sharding.map(|timing| {
            Membership::new(
                client.clone(),
                &settings.lease_namespace,
                me,
                timing,
                metrics.clone(),
                leadership.clone(),
            )
        });
        Self {
            election,
            leadership,
            membership,
            ownership_tx,
            ownership,
        }
    }
}

/// Feeds [`crate::health`]: the watchdog's tick every second, and whether the
/// apiserver answers (asked every few seconds unless a Lease renewal heard from it
/// meanwhile), with a log line when that changes.
async fn watch_health(ctx: Arc<Context>, cancel: CancellationToken) {
    use crate::health::{APISERVER_PERIOD, WATCHDOG_PERIOD};
    let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
    let mut apiserver = tokio::time::interval(APISERVER_PERIOD);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    apiserver.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreachable = false;
    let mut crowded = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = watchdog.tick() => ctx.health.tick(),
            _ = apiserver.tick() => {
                if !ctx.health.apiserver_answered_within(APISERVER_PERIOD) {
                    let asked = tokio::time::timeout(APISERVER_PERIOD, ctx.client.apiserver_version()).await;
                    match asked {
                        Ok(Ok(_)) => ctx.health.apiserver_answered(),
                        Ok(Err(e)) => ctx.health.apiserver_failed(&e.to_string()),
                        Err(_) => ctx.health.apiserver_failed("no answer within 5s"),
                    }
                }
                if let Some((open, limit)) = crate::health::count_descriptors() {
                    ctx.health.descriptors_counted(open, limit);
                }
                log_transition(
                    ctx.health.descriptor_problem(),
                    &mut crowded,
                    "not ready: too near the descriptor limit",
                    "descriptors back under the limit's margin",
                );
                log_transition(
                    ctx.health.apiserver_problem(),
                    &mut unreachable,
                    "not ready: the apiserver cannot be reached",
                    "the apiserver answers again",
                );
            }
        }
    }
}

/// Logs a readiness problem when it appears and when it is gone, not at every check.
fn log_transition(problem: Option<String>, flagged: &mut bool, appeared: &str, gone: &str) {
    match (problem, *flagged) {
        (Some(problem), false) => {
            tracing::warn!(%problem, "{appeared}");
            *flagged = true;
        }
        (None, true) => {
            tracing::info!("{gone}");
            *flagged = false;
        }
        _ => {}
    }
}

/// Starts the admission webhooks when they are on; where they listen.
async fn start_webhooks(
    ctx: &Arc<Context>,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(hooks) = &settings.webhooks else {
        ctx.webhook_ready
            .store(true, std::sync::atomic::Ordering::Release);
        return Ok(None);
    };
    let caches = ctx.caches.clone();
    let admission = crate::admission::review::Admission::new(
        ctx.validator.clone(),
        ctx.tenants.clone(),
        crate::admission::defaults::Defaults {
            polling_interval: settings.default_polling_interval.as_secs(),
            timeout_seconds: settings.graphql_timeout.as_secs(),
        },
        caches.clone(),
    );
    let webhooks = crate::admission::Webhooks {
        settings: hooks.clone(),
        namespace: settings.lease_namespace.clone(),
        client: ctx.client.clone(),
        admission,
        caches,
        metrics: ctx.metrics.clone(),
        leadership: ctx.leadership.clone(),
        ready: ctx.webhook_ready.clone(),
    };
    let addr = webhooks
        .start(cancel.clone())
        .await
        .with_context(|| format!("cannot listen on {} (WEBHOOK_PORT)", hooks.address))?;
    Ok(Some(addr))
}

/// Binds the admin server (/healthz, /readyz, /metrics, /stats): its address, and
/// the server to run until `cancel` fires.
async fn serve_admin(
    ctx: &Arc<Context>,
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(settings.admin_address)
        .await
        .with_context(|| format!("cannot listen on {} (METRICS_PORT)", settings.admin_address))?;
    let admin_addr = listener
        .local_addr()
        .context("the admin listener has no address")?;
    tracing::info!(address = %admin_addr, instance = %settings.instance, "admin server listening");
    let stats_token = read_stats_token(settings.stats_token_file.as_deref())?;
    let admin = axum::serve(
        listener,
        crate::admin::router(crate::admin::Admin {
            ctx: ctx.clone(),
            stats_token,
        })
        .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(cancel.clone().cancelled_owned());
    Ok((admin_addr, async move { admin.await }))
}

/// The lease tasks, the shard membership's apart: it is told first when this
/// replica leaves on purpose (the token), and stops with the others.
struct Tasks {
    leases: Vec<(&'static str, JoinHandle<()>)>,
    membership: Option<(CancellationToken, JoinHandle<()>)>,
}

/// How the operator is stopped: `leave` gracefully (hand-off first), `cancel`
/// at once; `leases` stops the lease tasks, last.
struct Stops {
    leave: CancellationToken,
    cancel: CancellationToken,
    leases: CancellationToken,
}

/// Runs until monitoring ends (`cancel`), a lease task ends on its own, or the
/// replica leaves (`leave`: it hands its TargetApps over first), then stops in
/// order: monitoring, running actions (bounded), the lease tasks (leaving the
/// shard and releasing the leader Lease), the admin server.
async fn until_stopped(
    ctx: Arc<Context>,
    monitoring: impl std::future::Future<Output = ()>,
    admin: JoinHandle<std::io::Result<()>>,
    mut tasks: Tasks,
    stops: Stops,
) -> anyhow::Result<()> {
    let mut monitoring = std::pin::pin!(monitoring);
    let failed = tokio::select! {
        _ = &mut monitoring => None,
        why = task_ended(&mut tasks) => Some(why),
        _ = stops.leave.cancelled() => {
            hand_over(&ctx, &mut monitoring, &mut tasks).await;
            None
        }
    };
    stops.cancel.cancel();
    // Actions already fenced finish (each is bounded by its timeout) before the
    // replica leaves the shard: a firing recorded is a firing acted on.
    ctx.actions.close();
    let grace = ctx.settings.action_execution_timeout + std::time::Duration::from_secs(1);
    if tokio::time::timeout(grace, ctx.actions.wait())
        .await
        .is_err()
    {
        tracing::warn!("actions still running at shutdown were abandoned");
    }
    stops.leases.cancel();
    // Leave the shard and release the leader Lease before exiting.
    let membership = tasks.membership.map(|(_, task)| ("shard membership", task));
    for (name, task) in tasks.leases.into_iter().chain(membership) {
        if !task.is_finished()
            && tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!(task = name, "did not stop within 5 s");
        }
    }
    if let Some(why) = failed {
        return Err(anyhow::anyhow!(why));
    }
    match admin.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("the admin server failed: {e}")),
        Err(e) => Err(anyhow::anyhow!("the admin server task failed: {e}")),
    }
}

/// Waits until a lease task ends on its own (a bug, a panic): this replica is
/// then unsure of its role and stops rather than run on. Why, in words.
async fn task_ended(tasks: &mut Tasks) -> String {
    let membership = tasks
        .membership
        .as_mut()
        .map(|(_, task)| ("shard membership", task));
    let watched: Vec<(&'static str, &mut JoinHandle<()>)> = tasks
        .leases
        .iter_mut()
        .map(|(name, task)| (*name, task))
        .chain(membership)
        .collect();
    if watched.is_empty() {
        return std::future::pending().await;
    }
    let names: Vec<&'static str> = watched.iter().map(|(name, _)| *name).collect();
    let (result, index, _) =
        futures::future::select_all(watched.into_iter().map(|(_, task)| task)).await;
    let task = names.get(index).copied().unwrap_or("lease");
    match result {
        Ok(()) => format!("the {task} task ended unexpectedly"),
        Err(e) => format!("the {task} task failed: {e}"),
    }
}

/// Leaves the shard while still monitoring: the other members take this
/// replica's namespaces over, and it runs on until it holds no TargetApp (those
/// with subscriptions are let go once their new owners hold them), monitoring
/// ends, or [`monitor::HANDOVER_LIMIT`] has passed. Its membership Lease stays,
/// marked as leaving, until it stops: the others know that the firings it
/// recorded are under way here, not to be resumed.
async fn hand_over(
    ctx: &Context,
    monitoring: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    tasks: &mut Tasks,
) {
    let Some((leave, _)) = tasks.membership.as_ref() else {
        return;
    };
    tracing::info!("leaving the shard: handing TargetApps over before stopping");
    leave.cancel();
    let held = || ctx.shard.read().map_or(0, |view| view.held);
    let drained = async {
        while held() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = monitoring.as_mut() => {}
        _ = drained => tracing::info!("every TargetApp handed over"),
        _ = tokio::time::sleep(monitor::HANDOVER_LIMIT) => {
            tracing::warn!(held = held(), "TargetApps still held when the hand-over time ran out");
        }
    }
}

/// `kco run`: starts, then stops cleanly on SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    tracing::info!(
        version = crate::version::VERSION,
        revision = crate::version::REVISION,
        build_date = crate::version::BUILD_DATE,
        instance = %settings.instance,
        "kco starting"
    );
    let config = cluster_config(&settings).await?;
    let cancel = CancellationToken::new();
    let running = start(settings, config, cancel.clone()).await?;
    let mut handle = running.handle;
    tokio::select! {
        _ = crate::shutdown::requested() => {
            tracing::info!("shutting down: handing over first (again to stop at once)");
            running.leave.cancel();
        }
        _ = cancel.cancelled() => {}
        stopped = &mut handle => return stopped.context("the operator task failed")?,
    }
    tokio::select! {
        _ = crate::shutdown::requested() => {
            tracing::info!("shutting down at once");
            cancel.cancel();
        }
        stopped = &mut handle => return stopped.context("the operator task failed")?,
    }
    handle.await.context("the operator task failed")?
}

/// The /stats token from its file: trimmed, and refused when empty.
fn read_stats_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<Arc<str>>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read STATS_TOKEN_FILE {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("STATS_TOKEN_FILE {} is empty", file.display());
    }
    Ok(Some(Arc::from(token)))
}
