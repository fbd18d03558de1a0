//! The in-memory change log: the last N changes, already encoded as NDJSON
//! lines, so a watcher that reconnects with `since=REV` can be caught up
//! without a full snapshot.

use bytes::Bytes;
use std::collections::VecDeque;

/// One committed change, encoded once and shared by every watcher.
#[derive(Clone, Debug)]
pub struct Change {
    pub revision: u64,
    /// A `WatchEvent` as one JSON line, newline included.
    pub line: Bytes,
}

/// Ring buffer of the most recent changes. Revisions increase but need not
/// be contiguous (etcd's revision also counts writes watchers never see),
/// so the log remembers its `floor`: it holds every change after it.
#[derive(Debug)]
pub struct ChangeLog {
    /// Oldest first.
    entries: VecDeque<Change>,
    /// Bounded so memory stays flat however long the daemon runs.
    capacity: usize,
    /// Every change after this revision is in `entries`: the revision the
    /// registry was loaded at, then that of the last change dropped.
    floor: u64,
}

// === impl ChangeLog ===

impl ChangeLog {
    /// An empty log for a registry loaded at revision `floor`.
    pub fn new(capacity: usize, floor: u64) -> Self {
        ChangeLog {
            entries: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            floor,
        }
    }

    pub fn push(&mut self, change: Change) {
        if self.entries.len() == self.capacity {
            if let Some(old) = self.entries.pop_front() {
                self.floor = old.revision;
            }
        }
        self.entries.push_back(change);
    }

    /// Forgets everything: the view was reloaded whole at `floor`.
    pub fn reset(&mut self, floor: u64) {
        self.entries.clear();
        self.floor = floor;
    }

    /// The changes after `since`, or `None` when the log no longer reaches
    /// back that far (the watcher needs a snapshot). `current` is the
    /// registry's revision: a watcher already at it needs nothing.
    pub fn since(&self, since: u64, current: u64) -> Option<Vec<Bytes>> {
        if since == current {
            return Some(Vec::new());
        }
        if since > current || since < self.floor {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|c| c.revision > since)
                .map(|c| c.line.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64) -> Change {
        Change {
            revision,
            line: Bytes::from(format!("{revision}\n")),
        }
    }

    #[test]
    fn answers_only_what_it_still_holds() {
        let mut log = ChangeLog::new(3, 0);
        for rev in 1..=5 {
            log.push(change(rev));
        }
        // Holds 3, 4, 5.
        assert_eq!(log.since(5, 5), Some(vec![]));
        assert_eq!(
            log.since(2, 5),
            Some(vec![Bytes::from("3\n"), "4\n".into(), "5\n".into()])
        );
        assert_eq!(log.since(4, 5), Some(vec![Bytes::from("5\n")]));
        assert_eq!(log.since(1, 5), None, "revision 2 fell out of the log");
        assert_eq!(
            log.since(9, 5),
            None,
            "a watcher ahead of us needs a snapshot"
        );
        assert_eq!(
            ChangeLog::new(3, 7).since(2, 7),
            None,
            "empty log after a restart"
        );
        // etcd: gaps between revisions (heartbeat flushes) are fine.
        let mut log = ChangeLog::new(2, 10);
        for rev in [12, 15, 19] {
            log.push(change(rev));
        }
        assert_eq!(log.since(15, 19), Some(vec![Bytes::from("19\n")]));
        assert_eq!(
            log.since(13, 19),
            Some(vec![Bytes::from("15\n"), "19\n".into()])
        );
        assert_eq!(log.since(11, 19), None, "12 was dropped");
    }
}
