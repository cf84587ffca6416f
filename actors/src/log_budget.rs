//! A bound on how many lines one kind of event may write to the log per
//! second, for events an outside party or a load can repeat at will (a TLS
//! scan, an archive that falls behind, a database outage): the first few
//! each second are logged, the rest only counted by their metric, so the
//! log stays readable and its cost stays flat.
//!
//! It owns the counting only; each caller keeps its own `static` budget
//! and decides what to log.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines of one kind allowed per second.
pub struct LogBudget {
    /// How many lines a second may have.
    per_second: u32,
    /// The second (since the first use of any budget, plus one) that
    /// `logged` counts; 0 before the first line.
    second: AtomicU64,
    /// Lines allowed so far in `second`.
    logged: AtomicU32,
}

impl LogBudget {
    /// A budget of `per_second` lines, for a `static`.
    pub const fn new(per_second: u32) -> LogBudget {
        LogBudget {
            per_second,
            second: AtomicU64::new(0),
            logged: AtomicU32::new(0),
        }
    }

    /// Whether one more line may be written this second.
    pub fn allows(&self) -> bool {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.logged.store(0, Ordering::Relaxed);
        }
        self.logged.fetch_add(1, Ordering::Relaxed) < self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    #[test]
    fn a_second_allows_its_budget_and_no_more() {
        static BUDGET: LogBudget = LogBudget::new(3);
        let allowed = (0..10).filter(|_| BUDGET.allows()).count();
        // Unless the second turned over in the middle, exactly 3.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
