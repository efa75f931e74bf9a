//! One shutdown for the whole process: a cancellation token every loop watches, a tracker of the
//! background tasks, and one deadline, fixed when shutdown begins, that every stage shares — so
//! `server.shutdown_timeout` bounds the whole stop, not each step of it. Open connections are cut
//! a little before the deadline ([`Shutdown::cut_off`]), so that the rows of the exchanges cut
//! can still be written or journaled in the time left.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal, the tracked background tasks and the total deadline.
#[derive(Debug)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    timeout: Duration,
    begun: OnceLock<Instant>,
}

/// The part of the shutdown timeout kept for recording after open connections are cut: a
/// quarter of it, at most this much.
const RECORDING_RESERVE_MAX: Duration = Duration::from_secs(5);

impl Shutdown {
    /// A shutdown whose stages together take at most `timeout` once it begins.
    pub fn new(timeout: Duration) -> Shutdown {
        Shutdown {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            timeout,
            begun: OnceLock::new(),
        }
    }

    /// Cancelled when shutdown begins: loops stop taking new work.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a background task that [`Shutdown::wait_tasks`] waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Begins shutdown (once): fixes the deadline and cancels the token.
    pub fn begin(&self) {
        self.begun();
        self.token.cancel();
    }

    fn begun(&self) -> Instant {
        *self.begun.get_or_init(Instant::now)
    }

    /// The instant by which everything must be done: `timeout` after shutdown began.
    pub fn deadline(&self) -> Instant {
        self.begun() + self.timeout
    }

    /// When connections still open are cut: the deadline less a quarter of the timeout (at most
    /// 5 s), which is left for writing the rows of what was cut.
    pub fn cut_off(&self) -> Instant {
        self.deadline() - (self.timeout / 4).min(RECORDING_RESERVE_MAX)
    }

    /// What is left of the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Runs `stage` until the deadline; `None` when the deadline came first (it is dropped).
    pub async fn within<F: Future>(&self, stage: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.deadline(), stage).await.ok()
    }

    /// Runs `stage` until [`Shutdown::cut_off`]; `None` when that came first (it is dropped).
    pub async fn before_cut_off<F: Future>(&self, stage: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.cut_off(), stage).await.ok()
    }

    /// Waits, until the deadline, for every tracked task to end; false if some were still
    /// running then (they are abandoned and end with the runtime).
    pub async fn wait_tasks(&self) -> bool {
        self.tracker.close();
        self.within(self.tracker.wait()).await.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_stage_shares_one_deadline() {
        let s = Shutdown::new(Duration::from_secs(10));
        let started = Instant::now();
        s.begin();
        // A stage that takes 6 s, then one that would take 6 s more: the second is cut at 10 s.
        assert!(s
            .within(tokio::time::sleep(Duration::from_secs(6)))
            .await
            .is_some());
        assert!(s
            .within(tokio::time::sleep(Duration::from_secs(6)))
            .await
            .is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(s.remaining(), Duration::ZERO);
        assert_eq!(s.cut_off() - started, Duration::from_millis(7500));
        // A long timeout keeps at most 5 s for recording.
        let long = Shutdown::new(Duration::from_secs(60));
        long.begin();
        assert_eq!(long.deadline() - long.cut_off(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_tasks_see_the_token_and_are_waited_for() {
        let s = Shutdown::new(Duration::from_secs(5));
        let token = s.token().clone();
        s.spawn(async move { token.cancelled().await });
        let stuck = CancellationToken::new();
        let ignored = stuck.clone();
        let t = s.spawn(async move { ignored.cancelled().await });
        s.begin();
        assert!(
            !s.wait_tasks().await,
            "a task that ignores the token outlives the deadline"
        );
        stuck.cancel();
        assert!(t.await.is_ok());
        assert!(s.wait_tasks().await);
    }
}
