//! A replica's share of limits declared for the whole Service (`budget_scope = service`): each
//! of `max_db_connections`, `max_user_connections` and the pool sizes is divided among the live
//! replicas. Sans-IO: the members and the clock come in, shares come out.
//!
//! The sum of the shares must never exceed the total, not even while replicas come and go and
//! each learns of it at its own moment. So a share shrinks at once and grows only late: a split
//! that was replaced still bounds the shares for `settle` afterwards, by which time the other
//! replicas have seen the same change and given up what this one takes.

use std::time::Duration;
use tokio::time::Instant;

/// How one replica divides a total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Budgets are this replica's own (`budget_scope = replica`, or nothing is known of peers).
    Whole,
    /// This replica is not among the live ones yet (not ready, or the first list is under way):
    /// nothing, so that it never takes what the others still hold; its clients wait.
    Joining,
    /// `n` live replicas, this one `rank`th in address order.
    Part { n: usize, rank: usize },
}

impl Split {
    /// This replica's share of `total`; 0 (unlimited, for the connection caps) stays 0, so the
    /// caller tells "nothing" from "unlimited" by `total`. The remainder goes to the lowest ranks;
    /// with fewer than one each, the highest ranks get none.
    pub fn share(self, total: usize) -> usize {
        match self {
            Split::Whole => total,
            Split::Joining => 0,
            Split::Part { n, rank } => {
                let n = n.max(1);
                total / n + usize::from(rank < total % n)
            }
        }
    }
}

/// Splits that were replaced, each bounding shares until its time is up.
const MAX_RETIRING: usize = 64;

#[derive(Debug)]
pub struct Budget {
    current: Split,
    retiring: Vec<(Split, Instant)>,
    settle: Duration,
}

impl Budget {
    pub fn new(initial: Split, settle: Duration) -> Self {
        Self {
            current: initial,
            retiring: Vec::new(),
            settle,
        }
    }

    /// The split now in force; whether it changed.
    pub fn observe(&mut self, split: Split, now: Instant) -> bool {
        if split == self.current {
            return false;
        }
        if self.retiring.len() == MAX_RETIRING {
            // Flapping faster than anyone can follow: keep the smallest bounds' latest expiry.
            let until = self.retiring.iter().map(|r| r.1).max().unwrap_or(now);
            self.retiring.retain(|r| r.0 == Split::Joining);
            self.retiring.push((Split::Joining, until));
        }
        let old = std::mem::replace(&mut self.current, split);
        self.retiring.push((old, now + self.settle));
        true
    }

    /// Drops the bounds whose time is up; whether any was (shares may have grown).
    pub fn tick(&mut self, now: Instant) -> bool {
        let before = self.retiring.len();
        self.retiring.retain(|(_, until)| *until > now);
        self.retiring.len() != before
    }

    /// When the next bound runs out.
    pub fn next_change(&self) -> Option<Instant> {
        self.retiring.iter().map(|r| r.1).min()
    }

    pub fn current(&self) -> Split {
        self.current
    }

    /// This replica's share of `total` now: the smallest under the current split and those
    /// still settling.
    pub fn share(&self, total: usize, now: Instant) -> usize {
        self.retiring
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s.share(total))
            .fold(self.current.share(total), usize::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: usize, rank: usize) -> Split {
        Split::Part { n, rank }
    }

    #[test]
    fn shares_add_up_to_the_total() {
        for total in [1usize, 2, 5, 6, 7, 20, 101] {
            for n in 1..=8 {
                let sum: usize = (0..n).map(|r| part(n, r).share(total)).sum();
                assert_eq!(sum, total, "total {total} over {n}");
            }
        }
        assert_eq!(part(3, 0).share(0), 0, "unlimited stays unlimited");
        assert_eq!(Split::Joining.share(50), 0);
        assert_eq!(
            part(3, 2).share(2),
            0,
            "fewer than one each: the last gets none"
        );
        assert_eq!(Split::Whole.share(50), 50);
    }

    #[test]
    fn adding_a_replica_never_grows_a_share() {
        for total in 1..60 {
            for n in 1..7 {
                for rank in 0..n {
                    for new_rank in rank..=n {
                        assert!(part(n + 1, new_rank).share(total) <= part(n, rank).share(total));
                    }
                }
            }
        }
    }

    #[test]
    fn shrinks_at_once_and_grows_after_settling() {
        let t0 = Instant::now();
        let settle = Duration::from_secs(2);
        let mut b = Budget::new(part(3, 0), settle);
        assert_eq!(b.share(12, t0), 4);
        // A replica stops: the share grows only once the others had time to see it.
        assert!(b.observe(part(2, 0), t0));
        assert_eq!(b.share(12, t0), 4);
        assert_eq!(b.next_change(), Some(t0 + settle));
        assert!(b.tick(t0 + settle));
        assert_eq!(b.share(12, t0 + settle), 6);
        // A replica joins: the share shrinks at once.
        assert!(b.observe(part(3, 1), t0 + settle));
        assert_eq!(b.share(12, t0 + settle), 4);
        assert!(!b.observe(part(3, 1), t0 + settle), "no change, no news");
    }

    #[test]
    fn a_quick_succession_keeps_the_smallest_bound() {
        let t0 = Instant::now();
        let settle = Duration::from_secs(2);
        let mut b = Budget::new(Split::Whole, settle);
        b.observe(Split::Joining, t0);
        b.observe(part(4, 0), t0 + Duration::from_millis(100));
        b.observe(part(2, 0), t0 + Duration::from_millis(200));
        let during = t0 + Duration::from_millis(300);
        assert_eq!(b.share(20, during), 0, "still bounded by Joining");
        let after_joining = t0 + Duration::from_millis(2150);
        b.tick(after_joining);
        assert_eq!(b.share(20, after_joining), 5, "then by 4 replicas");
        let all_settled = t0 + Duration::from_millis(2250);
        b.tick(all_settled);
        assert_eq!(b.share(20, all_settled), 10);
        for i in 0..500u64 {
            b.observe(part(2 + (i % 2) as usize, 0), all_settled);
        }
        assert!(b.retiring.len() <= MAX_RETIRING);
        assert_eq!(
            b.share(20, all_settled),
            0,
            "flapping keeps the smallest bound"
        );
    }
}
