//! The action ledger: when each tenant's actions ran in the last hour, kept where
//! every replica reads it, so that `maxActionsPerHour` holds across restarts,
//! fail-overs and shard hand-offs (a budget held in a replica's memory starts
//! full again with every new process).
//!
//! One Lease per tenant in KCO's own namespace (tenants cannot write there),
//! named `kco-actions-<digest of the tenant>`, holds the times as an annotation;
//! a replica takes a slot by writing the Lease back with its resourceVersion, so
//! two replicas never both take the last one. Pure window logic ([`take_slot`])
//! is apart from the apiserver calls ([`Ledger::take`]).

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, PostParams};

/// The annotation holding the times (Unix seconds, oldest first, as JSON).
pub const TIMES_ANNOTATION: &str = "operator.kco.local/action-times";
/// The annotation naming the tenant (for people reading the Lease).
pub const TENANT_ANNOTATION: &str = "operator.kco.local/tenant";
/// The label every ledger Lease carries.
pub const LEDGER_LABEL: &str = "operator.kco.local/ledger";
/// The window a budget counts over.
pub const WINDOW_SECONDS: i64 = 3600;
/// Conflicting writers retried before giving up.
const ATTEMPTS: usize = 8;

/// Why a slot was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The budget is used up: `used` actions in the last hour, the next slot frees
    /// at `frees_at` (Unix seconds).
    UsedUp { used: usize, frees_at: i64 },
    /// The apiserver could not be reached, or kept conflicting: worth retrying.
    Unavailable(String),
    /// The ledger Lease holds what KCO did not write: nothing runs until it is fixed.
    Unreadable(String),
}

/// The times of `recorded` still inside the window ending at `now`, plus `now`,
/// if fewer than `per_hour` remain; otherwise why not.
pub fn take_slot(recorded: &[i64], now: i64, per_hour: u32) -> Result<Vec<i64>, Refused> {
    let mut kept: Vec<i64> = recorded
        .iter()
        .copied()
        .filter(|t| {
            *t > now.saturating_sub(WINDOW_SECONDS) && *t <= now.saturating_add(WINDOW_SECONDS)
        })
        .collect();
    kept.sort_unstable();
    if kept.len() >= per_hour as usize {
        // The next slot frees when the `used - per_hour + 1`-th oldest leaves the
        // window (never, for a budget of none).
        let frees_at = kept
            .len()
            .checked_sub(per_hour as usize)
            .and_then(|i| kept.get(i))
            .map_or(i64::MAX, |t| t.saturating_add(WINDOW_SECONDS));
        return Err(Refused::UsedUp {
            used: kept.len(),
            frees_at,
        });
    }
    kept.push(now);
    Ok(kept)
}

/// How many of `recorded` fall in the window ending at `now`.
pub fn in_window(recorded: &[i64], now: i64) -> u32 {
    let count = recorded
        .iter()
        .filter(|t| **t > now.saturating_sub(WINDOW_SECONDS) && **t <= now)
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Actions in the hour ending at `now` of the tenants of `quota`: every tenant
/// whose quotas include it (`quota/a`, and `quota/a+b` where two quotas select
/// a namespace), from `counts` by tenant.
pub fn quota_actions(quota: &str, counts: &BTreeMap<String, u32>) -> u32 {
    counts
        .iter()
        .filter(|(tenant, _)| {
            tenant
                .strip_prefix("quota/")
                .is_some_and(|names| names.split('+').any(|n| n == quota))
        })
        .map(|(_, n)| *n)
        .fold(0, u32::saturating_add)
}

/// The name of `tenant`'s ledger Lease: a DNS label whatever the tenant's name.
pub fn lease_name(tenant: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, tenant.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("kco-actions-{hex}")
}

fn times_of(lease: &Lease) -> Result<Vec<i64>, String> {
    match lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TIMES_ANNOTATION))
    {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!(
                "the action ledger Lease {} is not readable ({e}); delete it to start the count afresh",
                lease.metadata.name.as_deref().unwrap_or_default()
            )
        }),
    }
}

/// The ledger of every tenant, in the Leases of one namespace.
#[derive(Clone)]
pub struct Ledger {
    leases: Api<Lease>,
}

impl Ledger {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
        }
    }

    /// Every tenant's actions in the hour ending at `now`, by tenant (one list of
    /// the ledger's Leases; an unreadable one counts none).
    pub async fn counts(&self, now: i64) -> Result<BTreeMap<String, u32>, kube::Error> {
        let leases = self
            .leases
            .list(&kube::api::ListParams::default().labels(LEDGER_LABEL))
            .await?;
        Ok(leases
            .items
            .iter()
            .filter_map(|lease| {
                let tenant = lease
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(TENANT_ANNOTATION)?;
                let times = times_of(lease).ok()?;
                Some((tenant.clone(), in_window(&times, now)))
            })
            .collect())
    }

    /// Takes a slot of `tenant`'s budget of `per_hour` actions at `now` (Unix
    /// seconds), or says why not.
    pub async fn take(&self, tenant: &str, per_hour: u32, now: i64) -> Result<(), Refused> {
        let name = lease_name(tenant);
        let unavailable = |e: kube::Error| {
            Refused::Unavailable(format!("cannot read or write the action ledger: {e}"))
        };
        for _ in 0..ATTEMPTS {
            let current = self.leases.get_opt(&name).await.map_err(unavailable)?;
            let recorded = match &current {
                Some(lease) => times_of(lease).map_err(Refused::Unreadable)?,
                None => Vec::new(),
            };
            let times = take_slot(&recorded, now, per_hour)?;
            let text =
                serde_json::to_string(&times).map_err(|e| Refused::Unreadable(e.to_string()))?;
            let written = match current {
                Some(mut lease) => {
                    lease
                        .metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(TIMES_ANNOTATION.to_owned(), text);
                    self.leases
                        .replace(&name, &PostParams::default(), &lease)
                        .await
                }
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([(
                                LEDGER_LABEL.to_owned(),
                                "true".to_owned(),
                            )])),
                            annotations: Some(BTreeMap::from([
                                (TENANT_ANNOTATION.to_owned(), tenant.to_owned()),
                                (TIMES_ANNOTATION.to_owned(), text),
                            ])),
                            ..ObjectMeta::default()
                        },
                        spec: None,
                    };
                    self.leases.create(&PostParams::default(), &lease).await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                // Another replica wrote first: read again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(Refused::Unavailable(format!(
            "the action ledger Lease {name} kept changing; gave up"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quotas_actions_are_its_tenants_in_the_last_hour() {
        assert_eq!(in_window(&[100, 3000, 3700, 3800, 9999], 3800), 3);
        let counts = BTreeMap::from([
            ("quota/a".to_owned(), 2),
            ("quota/a+b".to_owned(), 3),
            ("quota/ab".to_owned(), 7),
            ("quota/b".to_owned(), 5),
            ("namespace/a".to_owned(), 11),
        ]);
        assert_eq!(quota_actions("a", &counts), 5);
        assert_eq!(quota_actions("b", &counts), 8);
        assert_eq!(quota_actions("c", &counts), 0);
    }

    #[test]
    fn no_hour_holds_more_than_the_budget() {
        // Take a slot every 7 s for three hours against a budget of 10: every
        // window of an hour holds at most 10 taken slots.
        let mut recorded = Vec::new();
        let mut taken = Vec::new();
        for now in (0..3 * 3600).step_by(7) {
            if let Ok(times) = take_slot(&recorded, now, 10) {
                recorded = times;
                taken.push(now);
            }
        }
        for (i, start) in taken.iter().enumerate() {
            let within = taken[i..]
                .iter()
                .take_while(|t| **t < start + WINDOW_SECONDS)
                .count();
            assert!(within <= 10, "{within} slots in the hour from {start}");
        }
        // The budget is used, not wasted: 10 in each of the three hours.
        assert_eq!(taken.len(), 30, "{taken:?}");
        // The record keeps the last hour only.
        assert!(recorded.len() <= 10);
    }

    #[test]
    fn a_used_up_budget_says_when_the_next_slot_frees() {
        let recorded = [100, 200, 300];
        assert_eq!(
            take_slot(&recorded, 1000, 3),
            Err(Refused::UsedUp {
                used: 3,
                frees_at: 100 + WINDOW_SECONDS
            })
        );
        assert_eq!(
            take_slot(&recorded, 100 + WINDOW_SECONDS, 3),
            Ok(vec![200, 300, 100 + WINDOW_SECONDS])
        );
        assert!(matches!(
            take_slot(&[], 5, 0),
            Err(Refused::UsedUp { used: 0, .. })
        ));
    }

    #[test]
    fn times_far_in_the_future_do_not_block_the_budget_forever() {
        // A clock that jumped back, or a hand-edited Lease.
        assert_eq!(take_slot(&[i64::MAX, 10_000_000], 50, 1), Ok(vec![50]));
    }

    #[test]
    fn lease_names_are_dns_labels_whatever_the_tenant() {
        for tenant in ["namespace/team-a", "quota/a+b", "quota/Ünïcode/../x"] {
            let name = lease_name(tenant);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
        }
        assert_ne!(lease_name("quota/a"), lease_name("quota/b"));
    }
}
