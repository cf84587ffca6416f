//! The memory all not-yet-authenticated streams may hold for partial
//! stanzas, together.
//!
//! `c2s.max_stanza_bytes` bounds one connection; without a shared bound,
//! many connections that never log in could each hold a partial stanza
//! just under it, and together exhaust the server. Every parser of an
//! unauthenticated stream reserves what its partial stanza holds *before*
//! allocating it; a reservation that does not fit ends that connection
//! with `<resource-constraint/>`. After SASL success the stream stops
//! drawing from the budget (a logged-in user is accountable, and bounded
//! by `max_stanza_bytes` alone).

use super::ParseError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The first bytes of each partial stanza are not drawn from the budget:
/// a login (`<auth/>` is well under 1 KiB) then succeeds even while
/// others hold the budget, and what that costs is proportional to the
/// connections, as their other per-connection state is.
pub const UNBUDGETED_BYTES: usize = 4096;

/// The shared budget: a limit and what is reserved against it now.
#[derive(Debug)]
pub struct PartialStanzaBudget {
    /// The most bytes all unauthenticated partial stanzas may hold, from
    /// `c2s.max_unauthenticated_partial_bytes`.
    limit: usize,
    /// Bytes reserved by all [`Reservation`]s right now.
    reserved: AtomicUsize,
}

impl PartialStanzaBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PartialStanzaBudget {
            limit,
            reserved: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved right now.
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }
}

/// One parser's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The budget drawn from.
    budget: Arc<PartialStanzaBudget>,
    /// Bytes this parser holds reserved.
    held: usize,
}

impl Reservation {
    pub(crate) fn new(budget: Arc<PartialStanzaBudget>) -> Self {
        Reservation { budget, held: 0 }
    }

    /// The budget this reservation draws from, for the next stream.
    pub(crate) fn budget(&self) -> &Arc<PartialStanzaBudget> {
        &self.budget
    }

    /// Makes the reservation fit a partial stanza holding `held` bytes:
    /// shrinking always succeeds, growing only while all reservations
    /// together stay within the limit.
    pub(crate) fn resize(&mut self, held: usize) -> Result<(), ParseError> {
        let bytes = held.saturating_sub(UNBUDGETED_BYTES);
        let reserved = &self.budget.reserved;
        if bytes <= self.held {
            reserved.fetch_sub(self.held - bytes, Ordering::Relaxed);
        } else {
            let more = bytes - self.held;
            let limit = self.budget.limit;
            reserved
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    now.checked_add(more).filter(|after| *after <= limit)
                })
                .map_err(|_| {
                    metrics::counter!("gatehouse_unauthenticated_budget_refusals_total")
                        .increment(1);
                    ParseError::BudgetExhausted { limit }
                })?;
        }
        self.held = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let budget = PartialStanzaBudget::new(100);
        let mut a = Reservation::new(budget.clone());
        let mut b = Reservation::new(budget.clone());
        // The first UNBUDGETED_BYTES of each are free.
        a.resize(UNBUDGETED_BYTES).unwrap();
        assert_eq!(budget.reserved(), 0);
        a.resize(UNBUDGETED_BYTES + 60).unwrap();
        assert_eq!(
            b.resize(UNBUDGETED_BYTES + 41).unwrap_err(),
            ParseError::BudgetExhausted { limit: 100 }
        );
        b.resize(UNBUDGETED_BYTES + 40).unwrap();
        assert_eq!(budget.reserved(), 100);
        a.resize(UNBUDGETED_BYTES + 10).unwrap();
        assert_eq!(budget.reserved(), 50);
        drop(b);
        assert_eq!(budget.reserved(), 10);
        drop(a);
        assert_eq!(budget.reserved(), 0);
    }
}
