//! The queue between the monitors and the Event publisher: fair between tenants,
//! so that one tenant's flood of Events never costs another tenant its own.
//!
//! Each tenant has a bounded queue of its own, and the publisher takes from the
//! tenants in turn. Notices are *routine* (a state changed, a target came or
//! answered again) or *telling* (a firing, an action's result, a failure, a quota:
//! what on-call reads). A tenant's routine notices also spend a budget per
//! replica ([`ROUTINE_PER_SECOND`], bursts of [`ROUTINE_BURST`]); over it they are
//! dropped at once. A full queue drops the tenant's own oldest routine notice to
//! make room, and drops a telling one only for a newer telling one of the same
//! tenant. A tenant's telling notices are published before its routine ones,
//! each kind in order. Nothing one tenant does drops or delays another tenant's
//! notice beyond its turn.
//!
//! Pure (no I/O): the monitor pushes, the publisher task pops.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// Notices one tenant may have waiting on one replica.
pub const PER_TENANT: usize = 512;
/// Routine notices a tenant may publish per second from one replica, in the long run.
pub const ROUTINE_PER_SECOND: u32 = 10;
/// ...and at once.
pub const ROUTINE_BURST: u32 = 200;
/// Tenants remembered with nothing waiting (for their budgets) before the idle
/// ones are forgotten: namespaces come and go.
const REMEMBERED: usize = 10_000;

/// What became of a pushed notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued in the place of the tenant's own oldest notice (routine first).
    QueuedDroppingOlder,
    /// A routine notice over the tenant's budget: not queued.
    OverBudget,
    /// The tenant's queue is full of telling notices and this one is routine.
    Full,
}

struct Waiting<T> {
    telling: bool,
    item: T,
}

struct Tenant<T> {
    waiting: VecDeque<Waiting<T>>,
    routine: DefaultDirectRateLimiter,
}

struct State<T> {
    tenants: HashMap<String, Tenant<T>>,
    /// Tenants with something waiting, in the order they are served.
    turn: VecDeque<String>,
}

/// The fair queue; share it behind an `Arc`.
pub struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    per_tenant: usize,
    routine: Quota,
}

impl<T> FairQueue<T> {
    pub fn new() -> Self {
        Self::with_bounds(PER_TENANT, ROUTINE_PER_SECOND, ROUTINE_BURST)
    }

    /// A queue holding `per_tenant` notices per tenant, whose routine notices are
    /// bounded to `per_second` (bursts of `burst`) per tenant.
    pub fn with_bounds(per_tenant: usize, per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            state: Mutex::new(State {
                tenants: HashMap::new(),
                turn: VecDeque::new(),
            }),
            ready: Notify::new(),
            per_tenant: per_tenant.max(1),
            routine: Quota::per_second(per_second).allow_burst(burst),
        }
    }

    /// Queues `item` for `tenant`; never waits.
    pub fn push(&self, tenant: &str, telling: bool, item: T) -> Pushed {
        let Ok(mut state) = self.state.lock() else {
            return Pushed::Full;
        };
        let routine = self.routine;
        if state.tenants.len() >= REMEMBERED && !state.tenants.contains_key(tenant) {
            state.tenants.retain(|_, t| !t.waiting.is_empty());
        }
        let queue = state
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Tenant {
                waiting: VecDeque::new(),
                routine: RateLimiter::direct(routine),
            });
        if !telling && queue.routine.check().is_err() {
            return Pushed::OverBudget;
        }
        let mut pushed = Pushed::Queued;
        if queue.waiting.len() >= self.per_tenant {
            let victim = queue
                .waiting
                .iter()
                .position(|w| !w.telling)
                .or_else(|| telling.then_some(0));
            let Some(victim) = victim else {
                return Pushed::Full;
            };
            queue.waiting.remove(victim);
            pushed = Pushed::QueuedDroppingOlder;
        }
        let was_idle = queue.waiting.is_empty();
        queue.waiting.push_back(Waiting { telling, item });
        if was_idle {
            state.turn.push_back(tenant.to_owned());
        }
        drop(state);
        self.ready.notify_one();
        pushed
    }

    /// The next notice, taking each tenant in turn; `None` when nothing waits.
    pub fn try_pop(&self) -> Option<(String, T)> {
        let mut state = self.state.lock().ok()?;
        let tenant = state.turn.pop_front()?;
        let queue = state.tenants.get_mut(&tenant)?;
        // What on-call reads goes first: a telling notice does not wait behind
        // the tenant's routine ones (a flood of changes must not delay a firing).
        let next = match queue.waiting.iter().position(|w| w.telling) {
            Some(first) => queue.waiting.remove(first)?,
            None => queue.waiting.pop_front()?,
        };
        if !queue.waiting.is_empty() {
            state.turn.push_back(tenant.clone());
        }
        Some((tenant, next.item))
    }

    /// The next notice, waiting for one.
    pub async fn pop(&self) -> (String, T) {
        loop {
            let notified = self.ready.notified();
            if let Some(next) = self.try_pop() {
                return next;
            }
            notified.await;
        }
    }

    /// The next notice of the queue behind `queue`, waiting for one; `None` once
    /// the queue is gone (its owners dropped it), so that its publisher ends.
    pub async fn next(queue: &Weak<Self>) -> Option<(String, T)> {
        loop {
            let strong = queue.upgrade()?;
            let notified = strong.ready.notified();
            if let Some(next) = strong.try_pop() {
                return Some(next);
            }
            // Not holding the queue for long: a dropped queue ends the wait.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Notices waiting, over all tenants.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.tenants.values().map(|t| t.waiting.len()).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_tenant_costs_another_nothing() {
        let queue = FairQueue::with_bounds(64, 1000, 100_000);
        for i in 0..10_000 {
            queue.push("flood", false, format!("state {i}"));
        }
        assert_eq!(
            queue.push("quiet", true, "fired".to_owned()),
            Pushed::Queued
        );
        assert_eq!(
            queue.push("quiet", false, "changed".to_owned()),
            Pushed::Queued
        );
        // The flood kept its newest 64; the quiet tenant is served in turn.
        let first: Vec<(String, String)> = (0..4).filter_map(|_| queue.try_pop()).collect();
        let quiet: Vec<&str> = first
            .iter()
            .filter(|(t, _)| t == "quiet")
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(quiet, ["fired", "changed"], "{first:?}");
        assert_eq!(first[0], ("flood".to_owned(), "state 9936".to_owned()));
        let mut rest = 0;
        while queue.try_pop().is_some() {
            rest += 1;
        }
        assert_eq!(rest, 62, "the flood's newest 64, less the two served");
    }

    #[test]
    fn a_full_queue_drops_routine_notices_before_telling_ones() {
        let queue = FairQueue::with_bounds(3, 1000, 1000);
        queue.push("t", true, "fired 1");
        queue.push("t", false, "changed");
        queue.push("t", true, "fired 2");
        assert_eq!(
            queue.push("t", true, "fired 3"),
            Pushed::QueuedDroppingOlder
        );
        assert_eq!(queue.push("t", false, "changed again"), Pushed::Full);
        // Only telling notices left: a newer telling one replaces the oldest.
        assert_eq!(
            queue.push("t", true, "fired 4"),
            Pushed::QueuedDroppingOlder
        );
        let left: Vec<&str> = std::iter::from_fn(|| queue.try_pop().map(|(_, n)| n)).collect();
        assert_eq!(left, ["fired 2", "fired 3", "fired 4"]);
    }

    #[test]
    fn a_tenants_telling_notices_go_before_its_routine_ones() {
        let queue = FairQueue::with_bounds(1000, 1000, 1000);
        for i in 0..100 {
            queue.push("t", false, format!("changed {i}"));
        }
        queue.push("t", true, "fired 1".to_owned());
        queue.push("t", false, "changed 100".to_owned());
        queue.push("t", true, "fired 2".to_owned());
        let order: Vec<String> = std::iter::from_fn(|| queue.try_pop().map(|(_, n)| n)).collect();
        assert_eq!(order[..3], ["fired 1", "fired 2", "changed 0"]);
        assert_eq!(order.last().map(String::as_str), Some("changed 100"));
        assert_eq!(order.len(), 103);
    }

    #[test]
    fn routine_notices_spend_a_budget_and_telling_ones_do_not() {
        let queue = FairQueue::with_bounds(10_000, 1, 5);
        let routine: Vec<Pushed> = (0..8).map(|i| queue.push("t", false, i)).collect();
        assert_eq!(routine.iter().filter(|p| **p == Pushed::Queued).count(), 5);
        assert_eq!(routine[7], Pushed::OverBudget);
        for i in 0..50 {
            assert_eq!(queue.push("t", true, 100 + i), Pushed::Queued);
        }
        // Another tenant has a budget of its own.
        assert_eq!(queue.push("u", false, 0), Pushed::Queued);
        assert_eq!(queue.len(), 56);
    }

    #[test]
    fn idle_tenants_are_forgotten_and_waiting_ones_kept() {
        let queue = FairQueue::with_bounds(4, 1000, 1000);
        for i in 0..REMEMBERED - 1 {
            queue.push(&format!("gone-{i}"), true, i);
            assert!(queue.try_pop().is_some());
        }
        queue.push("waiting", true, 1);
        assert_eq!(queue.state.lock().unwrap().tenants.len(), REMEMBERED);
        // One more tenant: the idle ones are forgotten, the waiting one is not.
        queue.push("new", true, 2);
        assert_eq!(queue.state.lock().unwrap().tenants.len(), 2);
        let left: Vec<(String, usize)> = std::iter::from_fn(|| queue.try_pop()).collect();
        assert_eq!(left, [("waiting".to_owned(), 1), ("new".to_owned(), 2)]);
    }

    #[tokio::test]
    async fn the_publisher_waits_for_a_notice() {
        let queue = std::sync::Arc::new(FairQueue::new());
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.pop().await }
        });
        tokio::task::yield_now().await;
        queue.push("t", true, "fired");
        let (tenant, note) = waiting.await.unwrap();
        assert_eq!((tenant.as_str(), note), ("t", "fired"));
        assert!(queue.is_empty());

        // The publisher of a queue whose owners are gone ends.
        let weak = std::sync::Arc::downgrade(&queue);
        let publisher = tokio::spawn(async move { FairQueue::next(&weak).await });
        tokio::task::yield_now().await;
        drop(queue);
        let ended = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
    }
}
