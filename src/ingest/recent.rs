//! What the last few committed blocks wrote, kept in memory so the window
//! rules find the writes of the block they settle (a few blocks back)
//! without asking the database. It describes only blocks that committed,
//! in chain order ending at the cursor; anything else (a restart, another
//! writer, a commit whose outcome is unknown) empties it, and the rules ask
//! the database instead.

use std::collections::VecDeque;

use crate::ingest::plan::BlockPlan;
use crate::store::window::WrittenKey;

/// One block's writes, as the window rules look them up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub height: u64,
    pub hash: String,
    pub timestamp_ns: u64,
    /// Function-call and gas keys its chain writes touched.
    pub keys: Vec<WrittenKey>,
    /// Accounts whose balance its chain writes set (not deleted).
    pub accounts: Vec<String>,
}

impl Written {
    pub fn of(plan: &BlockPlan<'_>) -> Written {
        use crate::domain::PermissionKind as K;
        let mut keys: Vec<WrittenKey> = plan
            .key_rows
            .iter()
            .filter(|r| {
                r.access_key.is_some_and(|k| {
                    matches!(
                        k.permission.kind(),
                        K::FunctionCall | K::GasKeyFunctionCall | K::GasKeyFullAccess
                    )
                })
            })
            .map(|r| WrittenKey {
                account_id: r.account_id.to_string(),
                public_key: r.public_key.to_string(),
            })
            .collect();
        keys.sort_by(|a, b| (&a.account_id, &a.public_key).cmp(&(&b.account_id, &b.public_key)));
        keys.dedup();
        let mut accounts: Vec<String> = plan
            .balance_rows
            .iter()
            .filter(|r| r.state.is_some())
            .map(|r| r.account_id.to_string())
            .collect();
        accounts.sort();
        accounts.dedup();
        Written {
            height: plan.data.header.height,
            hash: plan.data.header.hash.to_string(),
            timestamp_ns: plan.data.header.timestamp_ns,
            keys,
            accounts,
        }
    }
}

/// The last committed blocks' writes, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recent {
    blocks: VecDeque<Written>,
    /// How many blocks to keep: the largest `settle_blocks` plus one.
    keep: usize,
}

impl Recent {
    pub fn new(max_settle: u32) -> Recent {
        Recent {
            blocks: VecDeque::new(),
            keep: max_settle as usize + 1,
        }
    }

    /// How many blocks it keeps.
    pub fn capacity(&self) -> usize {
        self.keep.max(1)
    }

    /// Empties it unless its last block is the cursor.
    pub fn anchor(&mut self, cursor_hash: &str) {
        if self.blocks.back().is_none_or(|b| b.hash != cursor_hash) {
            self.blocks.clear();
        }
    }

    pub fn push(&mut self, written: Written) {
        self.blocks.push_back(written);
        while self.blocks.len() > self.capacity() {
            self.blocks.pop_front();
        }
    }

    /// The block `settle` blocks before the one at `height` (the last one
    /// pushed), when it is held.
    pub fn settled(&self, height: u64, settle: u32) -> Option<&Written> {
        let last = self.blocks.back().filter(|b| b.height == height)?;
        let from_end = settle as usize;
        if from_end == 0 {
            return Some(last);
        }
        self.blocks
            .len()
            .checked_sub(1 + from_end)
            .and_then(|i| self.blocks.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(height: u64) -> Written {
        Written {
            height,
            hash: format!("h{height}"),
            timestamp_ns: height * 1_000,
            keys: vec![],
            accounts: vec![format!("a{height}.near")],
        }
    }

    #[test]
    fn the_settled_block_is_counted_in_blocks_held_not_in_heights() {
        let mut r = Recent::new(3);
        for h in [10, 11, 13, 14, 15] {
            r.push(written(h));
        }
        assert_eq!(
            r.settled(15, 3).map(|w| w.height),
            Some(11),
            "height 12 was skipped"
        );
        assert_eq!(r.settled(15, 0).map(|w| w.height), Some(15));
        assert_eq!(r.settled(15, 4), None, "only settle + 1 blocks are kept");
        assert_eq!(
            r.settled(14, 1),
            None,
            "asked for a block that is not the last"
        );
    }

    #[test]
    fn anchoring_elsewhere_than_the_last_block_empties_it() {
        let mut r = Recent::new(2);
        r.push(written(1));
        r.push(written(2));
        r.anchor("h2");
        assert!(r.settled(2, 1).is_some());
        r.anchor("h7");
        assert_eq!(r.settled(2, 0), None);
    }
}
