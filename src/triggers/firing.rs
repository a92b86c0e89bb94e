//! When a rule fires for a target: edge-triggered, after `for`, outside `cooldown`.
//!
//! A rule fires when its condition becomes true and has held for `for`; then not
//! again until the condition has been false in between. A firing that falls inside
//! the cooldown of the previous one is held back (not forgotten): if the condition
//! still holds when the cooldown ends, the rule fires then. `changed` makes every
//! change a new edge.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// What one rule knows about one target between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FiringState {
    /// Since when the condition has held continuously.
    since: Option<Timestamp>,
    /// Whether the rule already fired during this stretch of truth.
    fired: bool,
    /// The last firing, here or (after a hand-off) as recorded in status.
    last_fired: Option<Timestamp>,
    /// The firing whose stretch of truth was seen to end (the condition turned
    /// false after it): a later firing is a new episode, not a repeat.
    ended: Option<Timestamp>,
    /// `last_fired` came from status and its episode's end was not recorded.
    unconfirmed: bool,
    /// The last time the condition was seen not to hold.
    false_at: Option<Timestamp>,
}

/// A firing recorded in status by this or another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub time: Timestamp,
    /// Whether the condition was seen false after it (the episode ended).
    pub cleared: bool,
}

/// What adopting a recorded firing came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The rule fired again since: nothing changed.
    Stale,
    /// Adopted; its stretch goes on (or a later firing overtook it).
    Ongoing,
    /// Adopted, and its stretch had already ended here: the caller makes sure
    /// that end is recorded under the adopted time.
    Ended,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The condition does not hold.
    Idle,
    /// It holds, but not yet for `for`.
    Pending { remaining: Duration },
    /// It holds and fired already; waiting for it to become false.
    Fired,
    /// It would fire, but the last firing is too recent.
    Cooldown { remaining: Duration },
    /// Fire now.
    Fire,
}

impl FiringState {
    /// A state that knows of an earlier firing (from status, after a restart or hand-off).
    pub fn with_last_fired(last_fired: Option<Timestamp>) -> Self {
        Self {
            last_fired,
            ..Self::default()
        }
    }

    /// A state restored from status after a restart or hand-off. A firing whose
    /// episode is not known to have ended is *unconfirmed*: if the condition holds
    /// at the first evaluation the rule fires, and the fence (which reads the
    /// latest status) decides whether that is a repeat; if it does not hold, the
    /// episode is reported as ended.
    pub fn restored(recorded: Option<Recorded>) -> Self {
        match recorded {
            None => Self::default(),
            Some(Recorded {
                time,
                cleared: true,
            }) => Self {
                last_fired: Some(time),
                ended: Some(time),
                ..Self::default()
            },
            Some(Recorded {
                time,
                cleared: false,
            }) => Self {
                last_fired: Some(time),
                unconfirmed: true,
                ..Self::default()
            },
        }
    }

    /// The fence found that the firing at `own` belongs to an episode recorded as
    /// the firing at `at` (by another replica, or resumed): this stretch's firing
    /// is that one, unless the rule fired again since `own`.
    ///
    /// A *later* record (`at` after `own`) overtook this firing: it is the rule's
    /// last firing from now on, but an end seen here is this stretch's, which came
    /// before it, so it is never reported as that firing's end.
    pub fn adopt(&mut self, own: Timestamp, at: Timestamp) -> Adoption {
        if self.last_fired.map(|t| t.as_second()) != Some(own.as_second()) {
            return Adoption::Stale;
        }
        self.last_fired = Some(at);
        let overtaken = at.as_second() > own.as_second();
        if overtaken || self.fired || self.ended.map(|t| t.as_second()) != Some(own.as_second()) {
            return Adoption::Ongoing;
        }
        self.ended = Some(at);
        Adoption::Ended
    }

    /// When the rule last fired for this target.
    pub fn last_fired(&self) -> Option<Timestamp> {
        self.last_fired
    }

    /// The last firing whose episode was seen to end.
    pub fn ended(&self) -> Option<Timestamp> {
        self.ended
    }

    /// The last time the condition was seen not to hold: every firing recorded
    /// (here or elsewhere) before it belongs to an episode that has ended.
    pub fn false_at(&self) -> Option<Timestamp> {
        self.false_at
    }

    /// Advances the state with one evaluation. `new_edge` marks an observation that
    /// starts a new stretch even if the previous one also held (`changed`).
    pub fn step(
        &mut self,
        holds: bool,
        new_edge: bool,
        now: Timestamp,
        hold_for: Duration,
        cooldown: Duration,
    ) -> Decision {
        if !holds {
            self.false_at = Some(now);
            if self.fired || self.unconfirmed {
                self.ended = self.last_fired;
            }
            self.unconfirmed = false;
            self.since = None;
            self.fired = false;
            return Decision::Idle;
        }
        if new_edge {
            if self.fired {
                self.ended = self.last_fired;
            }
            self.since = Some(now);
            self.fired = false;
        }
        let since = *self.since.get_or_insert(now);
        if self.fired {
            return Decision::Fired;
        }
        let held = elapsed(since, now);
        if held < hold_for {
            return Decision::Pending {
                remaining: hold_for - held,
            };
        }
        // A firing restored from status whose episode is not known to have ended:
        // whether this stretch is that episode is for the fence to judge on the
        // latest status (it resumes that firing if its action never finished), so
        // the cooldown does not hold it back here.
        let unconfirmed = std::mem::take(&mut self.unconfirmed);
        if !unconfirmed && let Some(last) = self.last_fired {
            let gone = elapsed(last, now);
            if gone < cooldown {
                return Decision::Cooldown {
                    remaining: cooldown - gone,
                };
            }
        }
        self.fired = true;
        self.last_fired = Some(now);
        Decision::Fire
    }
}

/// Time from `from` to `to`, zero if the clock went backwards.
fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}
