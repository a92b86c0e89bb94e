//! Long runs of three real `kco run` replicas against the local control plane:
//! the chaos run (SIGKILL every few seconds, kube-apiserver restarted once) and
//! the soak run (steady, time-compressed load with a restart now and then).
//!
//! Every target is one namespace with one simulated Mina pod and a TargetApp
//! whose rule calls a webhook when the node turns CATCHUP. The scenario flips each
//! node between SYNCED and CATCHUP on a staggered schedule, so it knows how many
//! firings there must be per namespace; an HTTPS receiver counts the deliveries
//! by idempotency key. While it runs it samples each replica's memory, open file
//! descriptors, poll lateness and errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kco::simulator::{Simulator, StatePatch, SyncStatus};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::ControlPlane;
use super::fixtures;
use super::receiver::Receiver;
use super::replicas::{Fleet, Replicas, fleet};

/// Leader and membership Lease durations of the scenario's replicas (s).
pub const SCENARIO_LEASE: u64 = 10;
pub const SCENARIO_MEMBER_LEASE: u64 = 6;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Names the namespaces and the Lease namespace.
    pub prefix: &'static str,
    /// Targets (one namespace each).
    pub targets: usize,
    /// How long the load runs (set-up and the final drain not included).
    pub duration: Duration,
    /// How long each state holds before the node flips.
    pub hold: Duration,
    /// Kill a replica (chosen at random among `victims`) this often, with `signal`,
    /// and start it again at once.
    pub kill_every: Option<Duration>,
    pub signal: &'static str,
    pub victims: Vec<usize>,
    /// Stop kube-apiserver once, half-way, for this long.
    pub apiserver_down: Option<Duration>,
    /// How often to sample the replicas.
    pub sample_every: Duration,
    /// Every this many TargetApps (0: none) hear their node's sync status pushed
    /// (`subscriptions`, polled every 300 s) and fire on the pushed value.
    pub subscribed_every: usize,
}

/// How long after a SIGKILL the victim's subscriptions may be missing: it
/// starts again, lists, rejoins the shard (its Lease still live) and subscribes.
/// A change pushed meanwhile is not heard by anyone (a polled field would be
/// seen by the first poll).
pub const KILL_GAP: Duration = Duration::from_secs(2 * SCENARIO_MEMBER_LEASE);

/// One sample of one replica.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub replica: usize,
    pub pid: u32,
    pub rss_kib: u64,
    /// The allocator's live heap (`operator_kco_heap_allocated_bytes`), KiB.
    pub heap_kib: u64,
    pub fds: usize,
    /// Polls and failed polls since the previous sample of this process.
    pub polls: f64,
    pub failed_polls: f64,
    /// Mean poll lateness since the previous sample, and the smallest histogram
    /// bound under which 99% of those polls started (ms).
    pub lateness_mean_ms: f64,
    pub lateness_p99_ms: f64,
    /// ERROR lines in the process's log so far.
    pub errors: usize,
    /// Deliveries received and firings scheduled so far (all replicas).
    pub deliveries: usize,
    pub firings: usize,
}

/// What happened.
pub struct Outcome {
    pub plan: Plan,
    /// Firings the schedule caused, per namespace.
    pub firings: BTreeMap<String, usize>,
    /// When each firing's episode began (since the start), per namespace.
    pub episodes: BTreeMap<String, Vec<Duration>>,
    /// When each episode ended, per namespace.
    pub episode_ends: BTreeMap<String, Vec<Duration>>,
    /// The `firedAt` of each delivery, per namespace.
    pub fired_at: BTreeMap<String, Vec<String>>,
    /// When the apiserver went down and came back (since the start).
    pub outage_window: Option<(Duration, Duration)>,
    /// When each kill happened (since the start), its victim and the namespaces
    /// it held then (as the TargetApps' status said).
    pub kill_log: Vec<(Duration, usize, BTreeSet<String>)>,
    /// The namespaces whose rule fires on a pushed value.
    pub subscribed: BTreeSet<String>,
    /// For a few namespaces whose actions do not match their firings: their
    /// action Events, as the replicas reported them.
    pub notes: BTreeMap<String, Vec<String>>,
    /// Deliveries per namespace: idempotency key → how many times it arrived.
    pub deliveries: BTreeMap<String, BTreeMap<String, usize>>,
    pub samples: Vec<Sample>,
    pub kills: usize,
    /// Replicas that exited without being told to (none should).
    pub unexpected_exits: Vec<String>,
    /// After the apiserver restart: new namespaces → the replicas that polled them.
    pub after_restart: BTreeMap<String, BTreeSet<String>>,
    /// Replicas that ran through the apiserver restart.
    pub survivors: BTreeSet<String>,
    /// How long the apiserver was unavailable, start to ready.
    pub apiserver_outage: Option<Duration>,
}

impl Outcome {
    pub fn total_firings(&self) -> usize {
        self.firings.values().sum()
    }

    /// Distinct actions (idempotency keys) delivered.
    pub fn actions(&self) -> usize {
        self.deliveries.values().map(BTreeMap::len).sum()
    }

    /// Firings without an action, over all namespaces.
    pub fn missed_firings(&self) -> usize {
        self.missed().iter().map(|(_, f, a)| f - a).sum()
    }

    /// Actions beyond one per firing, over all namespaces.
    pub fn extra_actions(&self) -> usize {
        self.duplicated().iter().map(|(_, f, a)| a - f).sum()
    }

    /// Fails unless every firing got exactly one action (redeliveries of one
    /// action, under one idempotency key, are counted apart), printing the
    /// namespaces concerned. A firing on a pushed value may be missed only when
    /// no replica could hear a change of its episode: it began, or the one
    /// before it ended, within [`KILL_GAP`] of killing the replica that held its
    /// namespace (an end unheard, the next episode is taken for the same one:
    /// at most once).
    pub fn assert_exactly_once(&self) {
        let (firings, missed, extra) = (
            self.total_firings(),
            self.missed_firings(),
            self.extra_actions(),
        );
        let unexplained: Vec<(String, usize, usize)> = self
            .missed()
            .into_iter()
            .map(|(ns, f, a)| {
                let excused = if self.subscribed.contains(&ns) {
                    self.unheard(&ns)
                } else {
                    0
                };
                (ns, f - a, excused)
            })
            .filter(|(_, missed, excused)| missed > excused)
            .collect();
        let pushed: usize = self
            .firings
            .iter()
            .filter(|(ns, _)| self.subscribed.contains(*ns))
            .map(|(_, n)| n)
            .sum();
        let unheard: usize = self.subscribed.iter().map(|ns| self.unheard(ns)).sum();
        println!(
            "exactly once: {firings} firings ({pushed} on pushed values), {missed} missed \
             ({unheard} pushed while the namespace's replica was down), {extra} extra actions"
        );
        assert_eq!(
            (unexplained.len(), extra),
            (0, 0),
            "{missed} of {firings} firings without an action (beyond what kills explain, as \
             (namespace, missed, episodes in a kill's gap): {unexplained:?}), {extra} actions beyond one per firing\n{}",
            self.explain()
        );
    }

    /// The episodes of `ns` that began, or whose previous episode ended,
    /// within [`KILL_GAP`] of a kill of the replica that held `ns`.
    pub fn unheard(&self, ns: &str) -> usize {
        let Some(began) = self.episodes.get(ns) else {
            return 0;
        };
        let ends = self.episode_ends.get(ns).cloned().unwrap_or_default();
        let in_gap = |at: Duration| {
            self.kill_log.iter().any(|(killed, _, held)| {
                held.contains(ns) && at >= *killed && at <= *killed + KILL_GAP
            })
        };
        began
            .iter()
            .enumerate()
            .filter(|(i, at)| {
                in_gap(**at)
                    || i.checked_sub(1)
                        .and_then(|p| ends.get(p))
                        .is_some_and(|end| in_gap(*end))
            })
            .count()
    }

    /// Namespaces with more distinct actions than firings: (namespace, firings, actions).
    pub fn duplicated(&self) -> Vec<(String, usize, usize)> {
        self.compare(|firings, actions| actions > firings)
    }

    /// Namespaces with fewer distinct actions than firings.
    pub fn missed(&self) -> Vec<(String, usize, usize)> {
        self.compare(|firings, actions| actions < firings)
    }

    /// The same action delivered again (same idempotency key): a receiver that
    /// honours the key applies it once.
    pub fn redeliveries(&self) -> usize {
        self.deliveries
            .values()
            .flat_map(BTreeMap::values)
            .map(|n| n - 1)
            .sum()
    }

    fn compare(&self, bad: impl Fn(usize, usize) -> bool) -> Vec<(String, usize, usize)> {
        self.firings
            .iter()
            .map(|(ns, n)| {
                let actions = self.deliveries.get(ns).map_or(0, BTreeMap::len);
                (ns.clone(), *n, actions)
            })
            .filter(|(_, firings, actions)| bad(*firings, *actions))
            .collect()
    }

    /// For namespaces whose actions do not match their firings: when the episodes
    /// began and what was delivered, next to the kills and the outage.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "kills (at, replica, namespaces held): {:?}\napiserver down/up: {:?}\n",
            self.kill_log
                .iter()
                .map(|(at, victim, held)| (at, victim, held.len()))
                .collect::<Vec<_>>(),
            self.outage_window
        );
        let duplicated = self.duplicated();
        let missed = self.missed();
        for (ns, firings, actions) in duplicated.iter().take(8).chain(missed.iter().take(8)) {
            let _ = writeln!(
                out,
                "{ns}: {firings} firings, {actions} actions; episodes began at {:?}; delivered firedAt {:?}",
                self.episodes.get(ns).cloned().unwrap_or_default(),
                self.fired_at.get(ns).cloned().unwrap_or_default()
            );
            for note in self.notes.get(ns).into_iter().flatten() {
                let _ = writeln!(out, "    {note}");
            }
        }
        out
    }

    /// The samples as CSV.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "elapsed_s,replica,pid,rss_kib,heap_kib,open_fds,polls,failed_polls,lateness_mean_ms,lateness_p99_ms,error_lines,deliveries,firings\n",
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:.0},kco-{},{},{},{},{},{:.0},{:.0},{:.2},{:.0},{},{},{}",
                s.at.as_secs_f64(),
                s.replica,
                s.pid,
                s.rss_kib,
                s.heap_kib,
                s.fds,
                s.polls,
                s.failed_polls,
                s.lateness_mean_ms,
                s.lateness_p99_ms,
                s.errors,
                s.deliveries,
                s.firings
            );
        }
        out
    }

    /// A summary and ASCII charts of memory, descriptors and lateness over time.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "{} targets, {:?} run, states held {:?}, {} kills with SIG{} (each followed by a restart), apiserver outage {:?}",
            p.targets, p.duration, p.hold, self.kills, p.signal, self.apiserver_outage
        );
        let _ = writeln!(
            out,
            "firings {}, distinct actions {}, missed {}, duplicated {}, redeliveries (same key) {}, unexpected exits {}",
            self.total_firings(),
            self.actions(),
            self.missed().len(),
            self.duplicated().len(),
            self.redeliveries(),
            self.unexpected_exits.len()
        );
        for (i, trend) in self.trends() {
            let _ = writeln!(out, "kco-{i}: {trend}");
        }
        out.push_str(&self.chart("RSS (MiB)", |s| s.rss_kib as f64 / 1024.0));
        out.push_str(&self.chart("live heap (MiB)", |s| s.heap_kib as f64 / 1024.0));
        out.push_str(&self.chart("open file descriptors", |s| s.fds as f64));
        out.push_str(&self.chart("poll lateness p99 (ms)", |s| s.lateness_p99_ms));
        out
    }

    /// Per replica, its longest-lived process: first vs last quarter of its samples
    /// after the first one (warm-up).
    pub fn trends(&self) -> BTreeMap<usize, String> {
        let mut out = BTreeMap::new();
        for (replica, samples) in self.longest_lived() {
            let n = samples.len();
            if n < 8 {
                continue;
            }
            let quarter = (n - 1) / 4;
            let first = &samples[1..1 + quarter];
            let last = &samples[n - quarter..];
            let mean = |v: &[&Sample], f: &dyn Fn(&Sample) -> f64| {
                v.iter().map(|s| f(s)).sum::<f64>() / v.len() as f64
            };
            let rss = |s: &Sample| s.rss_kib as f64 / 1024.0;
            let heap = |s: &Sample| s.heap_kib as f64 / 1024.0;
            let fds = |s: &Sample| s.fds as f64;
            let late = |s: &Sample| s.lateness_mean_ms;
            out.insert(
                replica,
                format!(
                    "pid {} over {:.0} s: RSS {:.1} -> {:.1} MiB, live heap {:.1} -> {:.1} MiB, fds {:.0} -> {:.0}, mean lateness {:.2} -> {:.2} ms (first vs last quarter)",
                    samples[0].pid,
                    (samples[n - 1].at - samples[0].at).as_secs_f64(),
                    mean(first, &rss),
                    mean(last, &rss),
                    mean(first, &heap),
                    mean(last, &heap),
                    mean(first, &fds),
                    mean(last, &fds),
                    mean(first, &late),
                    mean(last, &late)
                ),
            );
        }
        out
    }

    /// Each replica's samples from its process that was sampled most often.
    pub fn longest_lived(&self) -> BTreeMap<usize, Vec<&Sample>> {
        let mut by_pid: BTreeMap<(usize, u32), Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            by_pid.entry((s.replica, s.pid)).or_default().push(s);
        }
        let mut out: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
        for ((replica, _), samples) in by_pid {
            if out.get(&replica).is_none_or(|v| v.len() < samples.len()) {
                out.insert(replica, samples);
            }
        }
        out
    }

    /// A chart with one row per replica band: time runs left to right in 60
    /// columns, each cell the maximum in that slot scaled to 0-9.
    fn chart(&self, title: &str, value: impl Fn(&Sample) -> f64) -> String {
        const COLUMNS: usize = 60;
        let end = self
            .samples
            .iter()
            .map(|s| s.at.as_secs_f64())
            .fold(1.0, f64::max);
        let max = self.samples.iter().map(&value).fold(0.0, f64::max);
        let mut out = format!(
            "\n{title}: 0-9 = 0..{max:.1}, one column per {:.0} s\n",
            end / COLUMNS as f64
        );
        let replicas: BTreeSet<usize> = self.samples.iter().map(|s| s.replica).collect();
        for replica in replicas {
            let mut cells = vec![None::<f64>; COLUMNS];
            for s in self.samples.iter().filter(|s| s.replica == replica) {
                let col = ((s.at.as_secs_f64() / end) * (COLUMNS - 1) as f64) as usize;
                let v = value(s);
                cells[col] = Some(cells[col].map_or(v, |c: f64| c.max(v)));
            }
            let row: String = cells
                .iter()
                .map(|c| match c {
                    None => ' ',
                    Some(v) if max <= 0.0 => {
                        let _ = v;
                        '0'
                    }
                    Some(v) => char::from(b'0' + ((v / max) * 9.0).round().clamp(0.0, 9.0) as u8),
                })
                .collect();
            let _ = writeln!(out, "kco-{replica} |{row}|");
        }
        out
    }

    /// Writes `samples.csv` and `report.txt` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("samples.csv"), self.csv())?;
        std::fs::write(
            dir.join("report.txt"),
            format!("{}\n{}", self.report(), self.explain()),
        )
    }
}

/// The state target `k` of `n` should be in at `t`: each holds `hold`, and the
/// targets are spread evenly over a whole cycle.
fn scheduled(k: usize, n: usize, t: Duration, hold: Duration) -> SyncStatus {
    let cycle = 2.0 * hold.as_secs_f64();
    let offset = cycle * k as f64 / n.max(1) as f64;
    let phase = ((t.as_secs_f64() + offset) / hold.as_secs_f64()) as u64;
    if phase % 2 == 1 {
        SyncStatus::Catchup
    } else {
        SyncStatus::Synced
    }
}

/// Runs `plan` with the `kco` binary and returns what happened.
pub async fn run(kco: PathBuf, plan: Plan) -> Outcome {
    let cp = ControlPlane::shared();
    let receiver_ip = IpAddr::V4(fixtures::loopback_ip());
    let receiver = Receiver::start(receiver_ip, "hooks.example.com").await;
    let url = format!("https://hooks.example.com:{}/kco", receiver.addr.port());
    let subscribed = std::cell::RefCell::new(BTreeSet::new());
    let made = std::cell::Cell::new(0usize);
    let spec = |ns: &str| -> Value {
        let mut spec = json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
               "serviceAccountName": "kco-actions",
               "actions": [{"name": "flip", "action": "webhook", "cooldown": "0s",
                            "parameters": {"url": url, "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}},
                            "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "CATCHUP"}}]});
        let k = made.replace(made.get() + 1);
        if plan.subscribed_every > 0 && k.is_multiple_of(plan.subscribed_every) {
            spec["pollingInterval"] = json!(300);
            spec["subscriptions"] = json!([{"query": "subscription { newSyncUpdate }"}]);
            spec["actions"][0]["trigger"]["field"] = json!("@newSyncUpdate");
            subscribed.borrow_mut().insert(ns.to_owned());
        }
        spec
    };
    let setup = Instant::now();
    let fleet = fleet(plan.prefix, plan.targets, spec).await;
    grant_webhook_rights(cp, fleet.nodes.keys(), &receiver.ca_pem);
    let cidr = format!("{receiver_ip}/32");
    let resolve = format!("hooks.example.com={receiver_ip}");
    // Lease timing between the tests' (4 s / 3 s) and production's (15 s / 10 s):
    // two cores run the control plane, three replicas and the load, and renewals
    // are sometimes seconds late.
    let replicas = Replicas::start_with(
        kco,
        &format!("{}-leases", plan.prefix),
        3,
        &["--endpoint-allowed-cidrs", &cidr, "--resolve", &resolve],
        (SCENARIO_LEASE, SCENARIO_MEMBER_LEASE),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(SCENARIO_MEMBER_LEASE)).await;
    println!(
        "{}: {} targets and 3 replicas set up in {:?}",
        plan.prefix,
        plan.targets,
        setup.elapsed()
    );

    let namespaces: Vec<String> = fleet.nodes.keys().cloned().collect();
    let firings: StdMutex<BTreeMap<String, usize>> = StdMutex::default();
    let episodes: StdMutex<BTreeMap<String, Vec<Duration>>> = StdMutex::default();
    let episode_ends: StdMutex<BTreeMap<String, Vec<Duration>>> = StdMutex::default();
    let replicas = Mutex::new(replicas);
    let quiet = AtomicBool::new(false);
    let started = Instant::now();
    let end = started + plan.duration;

    // Flip the nodes on schedule. Every state holds at least `hold` once it began
    // (a state shorter than a poll interval cannot be seen, by KCO or anyone), and a
    // CATCHUP episode starts only if it can hold its whole time before the end, so
    // that each one is seen.
    let drive = async {
        let mut current: Vec<SyncStatus> = vec![SyncStatus::Synced; namespaces.len()];
        let mut since: Vec<Option<Instant>> = vec![None; namespaces.len()];
        loop {
            let now = Instant::now();
            let done = now >= end;
            for (k, ns) in namespaces.iter().enumerate() {
                let mut want = scheduled(k, namespaces.len(), now - started, plan.hold);
                if since[k].is_some_and(|s| now < s + plan.hold) {
                    want = current[k];
                }
                if want == SyncStatus::Catchup
                    && current[k] == SyncStatus::Synced
                    && (done || now + plan.hold > end)
                {
                    want = SyncStatus::Synced;
                }
                if want == current[k] {
                    continue;
                }
                let patch = StatePatch {
                    sync_status: Some(want),
                    ..StatePatch::default()
                };
                fleet.sim.patch_state(fleet.nodes[ns], patch).await.unwrap();
                let note = |at: &StdMutex<BTreeMap<String, Vec<Duration>>>| {
                    at.lock()
                        .unwrap()
                        .entry(ns.clone())
                        .or_default()
                        .push(now - started);
                };
                if current[k] == SyncStatus::Catchup {
                    note(&episode_ends);
                }
                current[k] = want;
                since[k] = Some(now);
                if want == SyncStatus::Catchup {
                    *firings.lock().unwrap().entry(ns.clone()).or_default() += 1;
                    note(&episodes);
                }
            }
            if done && current.iter().all(|s| *s == SyncStatus::Synced) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Kill (and restart) replicas on schedule, and sample them.
    let samples: StdMutex<Vec<Sample>> = StdMutex::default();
    let mut kills = 0usize;
    let mut kill_log = Vec::new();
    let chaos = async {
        let mut previous: BTreeMap<u32, Counters> = BTreeMap::new();
        let mut next_kill = plan.kill_every.map(|every| started + every);
        let mut next_sample = started;
        while Instant::now() < end {
            let now = Instant::now();
            if now >= next_sample {
                let mut replicas = replicas.lock().await;
                let delivered = receiver.count();
                let scheduled: usize = firings.lock().unwrap().values().sum();
                for i in 0..replicas.len() {
                    if let Some(sample) = sample(
                        &mut replicas,
                        i,
                        started,
                        &mut previous,
                        delivered,
                        scheduled,
                    )
                    .await
                    {
                        samples.lock().unwrap().push(sample);
                    }
                }
                next_sample += plan.sample_every;
            }
            if let Some(at) = next_kill
                && now >= at
                && !quiet.load(Ordering::SeqCst)
                && !plan.victims.is_empty()
            {
                let victim = plan.victims[fastrand::usize(..plan.victims.len())];
                let held = held_by(&Replicas::name(victim), &namespaces).await;
                let mut replicas = replicas.lock().await;
                replicas.kill(victim, plan.signal);
                replicas.wait_exit(victim).await;
                replicas.spawn(victim);
                kills += 1;
                kill_log.push((now - started, victim, held));
                // From now: after a pause (the outage) kills do not come in a burst.
                next_kill = plan.kill_every.map(|every| Instant::now() + every);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Restart kube-apiserver half-way; then prove every replica still watches: new
    // namespaces with TargetApps must be polled, and every replica must poll some.
    let mut after_restart = BTreeMap::new();
    let mut survivors = BTreeSet::new();
    let mut apiserver_outage = None;
    let mut outage_window = None;
    let outage = async {
        let Some(down) = plan.apiserver_down else {
            return;
        };
        tokio::time::sleep_until((started + plan.duration / 2).into()).await;
        quiet.store(true, Ordering::SeqCst);
        {
            let mut r = replicas.lock().await;
            for i in 0..r.len() {
                r.wait_ready(i).await;
            }
        }
        let stopped = Instant::now();
        cp.restart_apiserver(down)
            .await
            .unwrap_or_else(|e| panic!("restart kube-apiserver: {e}"));
        apiserver_outage = Some(stopped.elapsed());
        outage_window = Some((stopped - started, started.elapsed()));
        println!("kube-apiserver back after {:?}", stopped.elapsed());
        // Every replica ran through the outage (kills paused meanwhile).
        survivors = (0..3).map(Replicas::name).collect();
        let quiet_spec =
            |_: &str| json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1});
        let mut fresh = Fleet {
            cp: ControlPlane::shared(),
            sim: Simulator::start("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
            nodes: BTreeMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ns = fresh.add(&format!("{}-new", plan.prefix), quiet_spec).await;
            after_restart.insert(ns, BTreeSet::new());
            tokio::time::sleep(Duration::from_secs(3)).await;
            let seen = fresh.pollers(Duration::from_secs(2)).await;
            for (ns, pollers) in after_restart.iter_mut() {
                pollers.extend(seen[ns].iter().cloned());
            }
            let covered: BTreeSet<&String> = after_restart.values().flatten().collect();
            if after_restart.values().all(|p| !p.is_empty()) && covered.len() == 3 {
                break;
            }
            if Instant::now() > deadline || after_restart.len() >= 20 {
                break;
            }
        }
        quiet.store(false, Ordering::SeqCst);
    };
    tokio::join!(drive, chaos, outage);

    // Let the last firings land.
    let firings = firings.into_inner().unwrap();
    let expected: usize = firings.values().sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    // (Distinct keys: a redelivery must not end the wait early.)
    let distinct = |receiver: &Receiver| {
        receiver
            .received()
            .iter()
            .filter_map(|r| r.headers.get("idempotency-key").cloned())
            .collect::<BTreeSet<_>>()
            .len()
    };
    while distinct(&receiver) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut deliveries: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut fired_at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in receiver.received() {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let ns = body["namespace"].as_str().unwrap_or("?").to_owned();
        let key = r
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        fired_at
            .entry(ns.clone())
            .or_default()
            .push(body["firedAt"].as_str().unwrap_or("?").to_owned());
        *deliveries.entry(ns).or_default().entry(key).or_default() += 1;
    }
    let mut replicas = replicas.into_inner();
    let unexpected_exits = replicas.unexpected_exits();
    // Keep the replicas' logs (the control plane's directory goes with it).
    let logs = report_dir(plan.prefix).join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::create_dir_all(&logs);
    if let Ok(entries) = std::fs::read_dir(&cp.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&replicas.lease_ns) || name.starts_with("kube-apiserver") {
                let _ = std::fs::copy(entry.path(), logs.join(&name));
            }
        }
    }
    let mut outcome = Outcome {
        plan,
        firings,
        episodes: episodes.into_inner().unwrap(),
        episode_ends: episode_ends.into_inner().unwrap(),
        fired_at,
        outage_window,
        kill_log,
        subscribed: subscribed.into_inner(),
        deliveries,
        samples: samples.into_inner().unwrap(),
        kills,
        unexpected_exits,
        after_restart,
        survivors,
        apiserver_outage,
        notes: BTreeMap::new(),
    };
    let client = cp.admin().await;
    let odd: Vec<String> = outcome
        .duplicated()
        .into_iter()
        .take(3)
        .chain(outcome.missed().into_iter().take(3))
        .map(|(ns, _, _)| ns)
        .collect();
    for ns in odd {
        let events: kube::Api<k8s_openapi::api::events::v1::Event> =
            kube::Api::namespaced(client.clone(), &ns);
        let mut notes = Vec::new();
        for e in events
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let reason = e.reason.clone().unwrap_or_default();
            if reason.starts_with("Action") || reason == "TriggerFired" || reason == "PollFailed" {
                notes.push(format!(
                    "{} {reason} x{} ({}): {}",
                    e.event_time.map(|t| t.0.to_string()).unwrap_or_default(),
                    e.deprecated_count.unwrap_or(1),
                    e.reporting_instance.unwrap_or_default(),
                    e.note.unwrap_or_default()
                ));
            }
        }
        outcome.notes.insert(ns, notes);
    }
    outcome
}

/// The namespaces among `namespaces` whose TargetApp's status names `replica`
/// as the one polling it.
async fn held_by(replica: &str, namespaces: &[String]) -> BTreeSet<String> {
    let client = ControlPlane::shared().admin().await;
    let apps: kube::Api<kco::targetapp::TargetApp> = kube::Api::all(client);
    let Ok(list) = apps.list(&Default::default()).await else {
        // Unknown: every namespace may have been the victim's.
        return namespaces.iter().cloned().collect();
    };
    list.items
        .into_iter()
        .filter(|app| app.status.as_ref().and_then(|s| s.shard.as_deref()) == Some(replica))
        .filter_map(|app| app.metadata.namespace)
        .filter(|ns| namespaces.contains(ns))
        .collect()
}

/// Counters of one process at its previous sample.
#[derive(Default, Clone, Copy)]
struct Counters {
    polls: f64,
    failed: f64,
    late_sum: f64,
    late_count: f64,
    buckets: [f64; 16],
    /// A gauge, not a counter: the latest value.
    heap_bytes: f64,
}

async fn sample(
    replicas: &mut Replicas,
    i: usize,
    started: Instant,
    previous: &mut BTreeMap<u32, Counters>,
    deliveries: usize,
    firings: usize,
) -> Option<Sample> {
    let pid = replicas.pid(i)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let metrics = replicas.metrics(i).await?;
    let now = parse_counters(&metrics);
    let heap_kib = (now.heap_bytes / 1024.0) as u64;
    let before = previous.insert(pid, now).unwrap_or_default();
    let late_count = now.late_count - before.late_count;
    let lateness_mean_ms = if late_count > 0.0 {
        1000.0 * (now.late_sum - before.late_sum) / late_count
    } else {
        0.0
    };
    let mut lateness_p99_ms = 0.0;
    for (k, bound) in LATENESS_BOUNDS.iter().enumerate() {
        if late_count > 0.0 && (now.buckets[k] - before.buckets[k]) >= 0.99 * late_count {
            lateness_p99_ms = bound * 1000.0;
            break;
        }
    }
    let errors = replicas
        .log(i)
        .and_then(|log| std::fs::read_to_string(log).ok())
        .map_or(0, |log| log.matches("\"level\":\"ERROR\"").count());
    Some(Sample {
        at: started.elapsed(),
        replica: i,
        pid,
        rss_kib,
        heap_kib,
        fds,
        polls: now.polls - before.polls,
        failed_polls: now.failed - before.failed,
        lateness_mean_ms,
        lateness_p99_ms,
        errors,
        deliveries,
        firings,
    })
}

/// The lateness histogram's bucket bounds (seconds), as `src/metrics.rs` sets them.
const LATENESS_BOUNDS: [f64; 13] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    f64::INFINITY,
];

fn parse_counters(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series == "operator_kco_heap_allocated_bytes" {
            c.heap_bytes = value;
        } else if series.starts_with("operator_kco_tapp_polls_total") {
            c.polls += value;
            if series.contains("result=\"failure\"") {
                c.failed += value;
            }
        } else if series.starts_with("operator_kco_tapp_poll_lateness_seconds_sum") {
            c.late_sum += value;
        } else if series.starts_with("operator_kco_tapp_poll_lateness_seconds_count") {
            c.late_count += value;
        } else if series.starts_with("operator_kco_tapp_poll_lateness_seconds_bucket") {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(|le| {
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap_or(f64::NAN)
                    }
                });
            if let Some(k) = le.and_then(|le| LATENESS_BOUNDS.iter().position(|b| *b == le)) {
                c.buckets[k] += value;
            }
        }
    }
    c
}

/// The tenant side of the webhook action in every namespace: the action account,
/// its right to read the receiver's CA Secret, and the Secret; one server-side apply.
fn grant_webhook_rights<'a>(
    cp: &ControlPlane,
    namespaces: impl Iterator<Item = &'a String>,
    ca: &str,
) {
    let ca_b64 = base64_encode(ca.as_bytes());
    let mut manifests = String::new();
    for ns in namespaces {
        let _ = write!(
            manifests,
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: kco-actions, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: kco-actions, namespace: {ns}}}\n\
             rules: [{{apiGroups: [\"\"], resources: [secrets], resourceNames: [kco-webhook-ca], verbs: [get]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: kco-actions, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: kco-actions}}\n\
             subjects: [{{kind: ServiceAccount, name: kco-actions, namespace: {ns}}}]\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: kco-webhook-ca, namespace: {ns}}}\n\
             data: {{ca.crt: {ca_b64}}}\n"
        );
    }
    let file = cp.dir.join(format!("rights-{}.yaml", fastrand::u32(..)));
    std::fs::write(&file, manifests).unwrap();
    cp.apply(&file, &["--server-side"]);
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A duration from the environment variable `name` in seconds, or `default`.
pub fn seconds_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Where a scenario's report goes: `$KCO_REPORT_DIR/<name>` or `target/<name>`.
pub fn report_dir(name: &str) -> PathBuf {
    std::env::var_os("KCO_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join(name)
}

/// The `kco` executable to run: `$KCO_BINARY` (a copy kept apart from the build
/// directory, for a long run while the code changes), or `built`.
pub fn kco_binary(built: &str) -> PathBuf {
    std::env::var_os("KCO_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(built))
}
