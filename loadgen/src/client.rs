//! The client side: N threads, each making one connection after another, round-robin over
//! the server's ports, as fast as they can or paced to a fixed rate. Pacing follows an
//! absolute schedule (connection k of a thread is due at start + k * interval), so a thread
//! that falls behind catches up instead of drifting; how far behind it fell is reported.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::exchange::{CloseMode, Exchange, client_connection};

/// A thread gives up after this many failures in a row (nothing is listening, ports are
/// exhausted): the run then reports them instead of spinning.
const MAX_CONSECUTIVE_ERRORS: u64 = 1000;

#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub targets: Vec<SocketAddr>,
    pub threads: usize,
    /// Connections per second over all threads; `None` saturates.
    pub rate: Option<f64>,
    pub stop: Stop,
    pub close: CloseMode,
    pub exchange: Exchange,
}

#[derive(Clone, Copy, Debug)]
pub enum Stop {
    After(Duration),
    Count(u64),
}

#[derive(Debug, Default)]
pub struct ClientStats {
    pub connections: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// From the first connection's start to the last one's end.
    pub elapsed: Duration,
    pub max_lag: Duration,
}

pub fn run(plan: &ClientPlan) -> ClientStats {
    let started = Instant::now();
    let budget = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..plan.threads)
        .map(|index| {
            let plan = plan.clone();
            let budget = Arc::clone(&budget);
            thread::spawn(move || client_thread(&plan, index, started, &budget))
        })
        .collect();
    let mut total = ClientStats::default();
    for thread in threads {
        let stats = thread.join().unwrap_or_else(|_| ClientStats {
            errors: 1,
            last_error: Some("a client thread panicked".into()),
            ..Default::default()
        });
        total.connections += stats.connections;
        total.errors += stats.errors;
        total.last_error = total.last_error.or(stats.last_error);
        total.max_lag = total.max_lag.max(stats.max_lag);
    }
    total.elapsed = started.elapsed();
    total
}

fn client_thread(
    plan: &ClientPlan,
    index: usize,
    started: Instant,
    budget: &AtomicU64,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let schedule = plan
        .rate
        .map(|rate| Schedule::new(started, rate / plan.threads as f64));
    let deadline = match plan.stop {
        Stop::After(duration) => Some(started + duration),
        Stop::Count(_) => None,
    };
    let mut consecutive_errors = 0;
    for k in 0u64.. {
        if let Stop::Count(count) = plan.stop
            && budget.fetch_add(1, Ordering::Relaxed) >= count
        {
            break;
        }
        if let Some(schedule) = &schedule {
            let now = Instant::now();
            let due = schedule.due(k);
            if let Some(deadline) = deadline
                && due >= deadline
            {
                break;
            }
            if due > now {
                thread::sleep(due - now);
            } else {
                stats.max_lag = stats.max_lag.max(now - due);
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let target = plan.targets[(index + k as usize) % plan.targets.len()];
        match client_connection(target, plan.exchange, plan.close) {
            Ok(()) => {
                stats.connections += 1;
                consecutive_errors = 0;
            }
            Err(err) => {
                stats.errors += 1;
                stats.last_error = Some(format!("client to {target}: {err}"));
                consecutive_errors += 1;
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    break;
                }
            }
        }
    }
    stats
}

/// When each connection of a paced thread is due.
struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    fn new(start: Instant, per_second: f64) -> Self {
        Self {
            start,
            interval: Duration::from_secs_f64(1.0 / per_second),
        }
    }

    fn due(&self, k: u64) -> Instant {
        self.start + self.interval.mul_f64(k as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_thread_is_due_on_an_absolute_schedule() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 5_000.0);
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.due(1) - start, Duration::from_micros(200));
        assert_eq!(schedule.due(5_000) - start, Duration::from_secs(1));
    }
}
