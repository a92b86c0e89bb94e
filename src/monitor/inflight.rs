//! Response bytes in flight: what poll bodies being read may hold in memory, per
//! tenant and per replica.
//!
//! The response cap bounds one body; these bound them all. A tenant with 500
//! targets that each send a body just under the cap, slowly, would otherwise hold
//! 500 caps at once. Every body's buffer takes its bytes from its tenant's share
//! and from the replica's total before it grows, and gives them back when the poll
//! ends. A poll that cannot take them is throttled at once (never waits, so it
//! holds nothing while others read): its tenant sees `PollThrottled`, and other
//! tenants, whose shares are their own, keep their schedule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default bytes all poll bodies of one replica may hold at once.
pub const DEFAULT_REPLICA_BYTES: u64 = 256 * 1024 * 1024;
/// Default bytes one tenant's poll bodies may hold at once.
pub const DEFAULT_TENANT_BYTES: u64 = 32 * 1024 * 1024;

/// Tenants remembered without a share in use before the map is swept.
const SWEEP_AT: usize = 1024;

/// The replica's budget and every tenant's share of it; clone to share.
#[derive(Clone)]
pub struct InFlight {
    replica: Arc<Semaphore>,
    replica_bytes: u64,
    tenant_bytes: u64,
    tenants: Arc<Mutex<HashMap<String, Weak<Semaphore>>>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("replica_bytes", &self.replica_bytes)
            .field("tenant_bytes", &self.tenant_bytes)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// A budget of `replica_bytes` for the replica and `tenant_bytes` for each tenant
    /// (at most the replica's).
    pub fn new(replica_bytes: u64, tenant_bytes: u64) -> Self {
        let replica_bytes = replica_bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            replica: Arc::new(Semaphore::new(permits(replica_bytes))),
            replica_bytes,
            tenant_bytes: tenant_bytes.clamp(1, replica_bytes),
            tenants: Arc::default(),
        }
    }

    /// The share of `tenant`, for the pollers of its targets; it lives as long as
    /// one of them holds it.
    pub fn share(&self, tenant: &str) -> Share {
        let mut tenants = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let semaphore = match tenants.get(tenant).and_then(Weak::upgrade) {
            Some(semaphore) => semaphore,
            None => {
                if tenants.len() >= SWEEP_AT {
                    tenants.retain(|_, share| share.strong_count() > 0);
                }
                let semaphore = Arc::new(Semaphore::new(permits(self.tenant_bytes)));
                tenants.insert(tenant.to_owned(), Arc::downgrade(&semaphore));
                semaphore
            }
        };
        Share {
            tenant: semaphore,
            replica: self.replica.clone(),
            tenant_bytes: self.tenant_bytes,
            replica_bytes: self.replica_bytes,
        }
    }

    /// Bytes held now by all poll bodies of this replica.
    pub fn held(&self) -> u64 {
        self.replica_bytes - self.replica.available_permits() as u64
    }
}

fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// One tenant's share and the replica's budget, as a poller takes from them.
#[derive(Clone, Debug)]
pub struct Share {
    tenant: Arc<Semaphore>,
    replica: Arc<Semaphore>,
    tenant_bytes: u64,
    replica_bytes: u64,
}

/// Why bytes could not be taken: whose budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The tenant's responses in flight hold its whole share (this many bytes).
    Tenant(u64),
    /// All responses in flight on this replica hold its whole budget.
    Replica(u64),
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(bytes) => write!(
                f,
                "the tenant's responses being read already hold its share of {bytes} bytes"
            ),
            Self::Replica(bytes) => write!(
                f,
                "responses being read on this replica already hold its {bytes} bytes"
            ),
        }
    }
}

/// Bytes taken for one body; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    permits: Vec<OwnedSemaphorePermit>,
    bytes: u64,
}

impl Held {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Share {
    /// Takes `bytes` more for `held`, from the tenant's share first, then from the
    /// replica's budget; never waits. On refusal nothing more is taken.
    pub fn take(&self, held: &mut Held, bytes: usize) -> Result<(), Over> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| Over::Tenant(self.tenant_bytes))?;
        let tenant = self
            .tenant
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Over::Tenant(self.tenant_bytes))?;
        let replica = self
            .replica
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Over::Replica(self.replica_bytes))?;
        held.permits.push(tenant);
        held.permits.push(replica);
        held.bytes += u64::from(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_share_costs_another_nothing() {
        let inflight = InFlight::new(1000, 300);
        let greedy = inflight.share("greedy");
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut body = Held::default();
            greedy.take(&mut body, 100).unwrap();
            held.push(body);
        }
        let mut more = Held::default();
        assert_eq!(greedy.take(&mut more, 1), Err(Over::Tenant(300)));
        assert_eq!(more.bytes(), 0);
        // Another of the same tenant's targets shares the same share.
        assert_eq!(
            inflight.share("greedy").take(&mut more, 1),
            Err(Over::Tenant(300))
        );
        let mut quiet = Held::default();
        inflight.share("quiet").take(&mut quiet, 300).unwrap();
        assert_eq!(inflight.held(), 600);
        drop(held);
        assert_eq!(inflight.held(), 300);
        greedy.take(&mut more, 300).unwrap();
    }

    #[test]
    fn the_replica_budget_bounds_all_tenants_together() {
        let inflight = InFlight::new(500, 300);
        let mut a = Held::default();
        let mut b = Held::default();
        inflight.share("a").take(&mut a, 300).unwrap();
        assert_eq!(
            inflight.share("b").take(&mut b, 250),
            Err(Over::Replica(500))
        );
        // The refused take gave back what it took from the tenant's share.
        inflight.share("b").take(&mut b, 200).unwrap();
        assert_eq!(inflight.held(), 500);
    }

    #[test]
    fn a_share_is_forgotten_once_no_poller_holds_it() {
        let inflight = InFlight::new(1000, 10);
        for i in 0..SWEEP_AT + 5 {
            let _ = inflight.share(&format!("gone-{i}"));
        }
        let kept = inflight.share("kept");
        let _ = inflight.share("another");
        let tenants = inflight.tenants.lock().unwrap();
        assert!(tenants.len() < SWEEP_AT, "{}", tenants.len());
        assert!(tenants.get("kept").is_some_and(|w| w.strong_count() == 1));
        drop(kept);
    }
}
