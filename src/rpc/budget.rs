//! The request budget: at most `per_second` requests in any one-second
//! window, as the node sees them (see [`WINDOW`]). Within that, requests
//! may go out together (a block's independent requests leave at once
//! instead of one slot apart), which an evenly spaced limiter would delay
//! by a slot each. Following the chain has first
//! claim: the background lane leaves a reserve of each window to it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window the budget is held over: a second plus a margin, so requests
/// that leave on time but reach the node late (network jitter, a busy
/// scheduler) by up to the margin still never put more than `per_second`
/// into any one second there. The sustained rate is `per_second` / 1.1.
const WINDOW: Duration = Duration::from_millis(1_100);

#[derive(Debug)]
pub struct Budget {
    per_second: usize,
    /// Slots of each window only the follower's lane may take.
    reserve: usize,
    /// When the requests of the last window went out, oldest first.
    sent: Mutex<VecDeque<Instant>>,
}

impl Budget {
    pub fn new(per_second: usize) -> Budget {
        let per_second = per_second.max(1);
        Budget {
            per_second,
            reserve: if per_second > 1 {
                (per_second / 3).max(1)
            } else {
                0
            },
            sent: Mutex::new(VecDeque::with_capacity(per_second)),
        }
    }

    /// Takes a slot if one is free for `background` or the follower;
    /// otherwise says when to look again.
    pub fn try_take(&self, background: bool) -> Result<(), Instant> {
        let limit = if background {
            self.per_second - self.reserve
        } else {
            self.per_second
        };
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            sent.pop_front();
        }
        if sent.len() < limit {
            sent.push_back(now);
            return Ok(());
        }
        // The slot frees when the oldest request that fills it leaves the window.
        Err(sent[sent.len() - limit] + WINDOW)
    }

    /// Waits for a slot.
    pub async fn take(&self, background: bool) {
        while let Err(at) = self.try_take(background) {
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_no_window_holds_more_than_the_budget() {
        let b = Budget::new(5);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.take(false).await;
        }
        assert_eq!(Instant::now(), t0, "five at once");
        b.take(false).await;
        assert_eq!(
            Instant::now(),
            t0 + WINDOW,
            "the sixth waits for the first to leave the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_lane_leaves_a_reserve_to_the_follower() {
        let b = Budget::new(6);
        for _ in 0..4 {
            assert!(b.try_take(true).is_ok());
        }
        assert!(b.try_take(true).is_err(), "two of six are reserved");
        assert!(b.try_take(false).is_ok());
        assert!(b.try_take(false).is_ok());
        assert!(b.try_take(false).is_err());
    }

    #[test]
    fn a_budget_of_one_has_no_reserve_left_to_starve_on() {
        let b = Budget::new(1);
        assert_eq!((b.per_second, b.reserve), (1, 0));
    }
}
