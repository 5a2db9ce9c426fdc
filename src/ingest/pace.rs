//! When to ask for the final head again. Polling on a fixed tick adds up to
//! a whole tick to every alert; instead the follower learns the chain's
//! block interval from the heads it sees and asks when the next block is
//! due, then often for a short while, and falls back to the configured
//! interval when the chain seems to pause.

use std::time::{Duration, Instant};

/// How often to ask once the next block is due: at least this often...
const DUE_STEP: Duration = Duration::from_millis(40);
/// ...or a tenth of the block interval, if that is longer.
const DUE_STEPS_PER_BLOCK: u32 = 10;

#[derive(Debug, Clone)]
pub struct Pacer {
    /// `[ingest] poll_interval`: the longest wait.
    poll: Duration,
    /// The last new final head and when it was first seen.
    seen: Option<(u64, Instant)>,
    /// The time between blocks, smoothed.
    per_block: Option<Duration>,
}

impl Pacer {
    pub fn new(poll: Duration) -> Pacer {
        Pacer {
            poll,
            seen: None,
            per_block: None,
        }
    }

    /// Records the final head as seen at `at`.
    pub fn saw(&mut self, height: u64, at: Instant) {
        match self.seen {
            Some((h, t)) if height > h => {
                let gaps = u32::try_from(height - h).unwrap_or(u32::MAX);
                let per = at.saturating_duration_since(t) / gaps;
                self.per_block = Some(match self.per_block {
                    Some(p) => (p * 3 + per) / 4,
                    None => per,
                });
                self.seen = Some((height, at));
            }
            Some(_) => {}
            None => self.seen = Some((height, at)),
        }
    }

    /// How long to wait at `now` before asking again, when the follower is
    /// at the head.
    pub fn wait(&self, now: Instant) -> Duration {
        let (Some((_, seen)), Some(per)) = (self.seen, self.per_block) else {
            return self.poll;
        };
        let step = DUE_STEP.max(per / DUE_STEPS_PER_BLOCK).min(self.poll);
        // Aim a step early: a head is seen up to a step after it appears.
        let due = seen + per.saturating_sub(step);
        if now < due {
            (due - now).min(self.poll)
        } else if now < seen + per * 2 {
            step
        } else {
            self.poll
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_a_learned_interval_it_waits_the_configured_one() {
        let mut p = Pacer::new(500 * MS);
        let t0 = Instant::now();
        assert_eq!(p.wait(t0), 500 * MS);
        p.saw(10, t0);
        assert_eq!(p.wait(t0), 500 * MS, "one head says nothing of the pace");
    }

    #[test]
    fn it_asks_when_the_next_block_is_due_then_often_then_backs_off() {
        let mut p = Pacer::new(500 * MS);
        let t0 = Instant::now();
        p.saw(10, t0);
        p.saw(11, t0 + 600 * MS);
        p.saw(11, t0 + 650 * MS); // not new: changes nothing
        let seen = t0 + 600 * MS;
        // due at 600 ms after the last head, asked a step early
        assert_eq!(p.wait(seen), 500 * MS, "capped by poll_interval");
        // a step is a tenth of the interval: 60 ms
        assert_eq!(p.wait(seen + 300 * MS), 240 * MS);
        assert_eq!(p.wait(seen + 540 * MS), 60 * MS);
        assert_eq!(p.wait(seen + 900 * MS), 60 * MS);
        // two intervals without a block: the chain pauses
        assert_eq!(p.wait(seen + 1_300 * MS), 500 * MS);
    }

    #[test]
    fn skipped_heights_and_jitter_average_out() {
        let mut p = Pacer::new(2_000 * MS);
        let t0 = Instant::now();
        p.saw(10, t0);
        p.saw(12, t0 + 1_200 * MS); // a skipped height: 600 ms per block
        assert_eq!(p.per_block, Some(600 * MS));
        p.saw(13, t0 + 2_000 * MS); // 800 ms
        assert_eq!(p.per_block, Some(650 * MS));
    }
}
