//! SQLite's writers, served in arrival order.
//!
//! SQLite has one writer at a time. A writer that finds the lock taken waits
//! in the busy handler, which sleeps and retries with growing pauses: under
//! load the writers that happen to retry at the right moment win, and an
//! unlucky one can wait seconds while later ones pass it. The gate queues
//! this process's writers in a ticket line instead (first come, first
//! served) and lets one at a time take the database's write lock; SQLite's
//! busy handler then only arbitrates with other processes.
//!
//! PostgreSQL locks rows, not the database: it has no gate.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// A fair (FIFO) lock: tickets are served in the order they were taken.
#[derive(Debug, Default)]
pub struct WriteGate {
    line: Mutex<Line>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct Line {
    next_ticket: u64,
    now_serving: u64,
}

impl WriteGate {
    /// Waits for this caller's turn; the turn ends when the guard drops
    /// (also on an error return or a panic).
    pub fn enter(&self) -> GateGuard<'_> {
        let mut line = self.lock();
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        while line.now_serving != ticket {
            line = self.turn.wait(line).unwrap_or_else(PoisonError::into_inner);
        }
        GateGuard { gate: self }
    }

    /// Like [`WriteGate::enter`], for a turn that outlives the borrow of the
    /// gate (a request's turn, taken before it checks out a connection).
    pub fn enter_owned(self: &Arc<Self>) -> OwnedTurn {
        std::mem::forget(self.enter());
        OwnedTurn { gate: self.clone() }
    }

    fn leave(&self) {
        let mut line = self.lock();
        line.now_serving += 1;
        drop(line);
        self.turn.notify_all();
    }

    /// How many callers hold or wait for a turn.
    pub fn queued(&self) -> u64 {
        let line = self.lock();
        line.next_ticket - line.now_serving
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // The line stays consistent whatever panicked while holding it.
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A turn at the gate; the next ticket is served when it drops.
#[derive(Debug)]
pub struct GateGuard<'a> {
    gate: &'a WriteGate,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

/// A turn at the gate that owns a handle to it; the next ticket is served
/// when it drops.
#[derive(Debug)]
pub struct OwnedTurn {
    gate: Arc<WriteGate>,
}

impl Drop for OwnedTurn {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn wait_until(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn turns_follow_arrival_order() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter();
        let mut threads = Vec::new();
        for i in 0..8u64 {
            let (g, order) = (gate.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _turn = g.enter();
                order.lock().unwrap().push(i);
            }));
            // Thread i has its ticket before thread i + 1 starts.
            wait_until(|| gate.queued() == i + 2);
        }
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(gate.queued(), 0);
    }

    #[test]
    fn a_panic_ends_the_turn() {
        let gate = Arc::new(WriteGate::default());
        let g = gate.clone();
        let panicked = std::thread::spawn(move || {
            let _turn = g.enter();
            panic!("inside the gate");
        })
        .join();
        assert!(panicked.is_err());
        let _turn = gate.enter();
        assert_eq!(gate.queued(), 1);
    }
}
