//! Watch failures, logged: the first at once, then at most one line a minute with how many
//! were not logged, and a line when the watch works again. kube's backoff paces the retries;
//! this only makes them visible (an RBAC 403 would otherwise retry silently for ever).

use std::time::Duration;

use tokio::time::Instant;

const EVERY: Duration = Duration::from_secs(60);

pub(crate) struct WatchErrors {
    kind: String,
    last_logged: Option<Instant>,
    not_logged: u64,
    failing: bool,
}

impl WatchErrors {
    pub(crate) fn new(kind: String) -> WatchErrors {
        WatchErrors { kind, last_logged: None, not_logged: 0, failing: false }
    }

    /// Logs `e` unless a line was logged less than a minute ago; true when it logged.
    pub(crate) fn failed(&mut self, e: &dyn std::fmt::Display) -> bool {
        self.failing = true;
        let now = Instant::now();
        if self.last_logged.is_some_and(|t| now.duration_since(t) < EVERY) {
            self.not_logged += 1;
            return false;
        }
        tracing::warn!(kind = %self.kind, error = %e, repeated = self.not_logged, "watch failed; retrying with backoff");
        self.last_logged = Some(now);
        self.not_logged = 0;
        true
    }

    /// An event arrived: the watch works (again).
    pub(crate) fn recovered(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(kind = %self.kind, "watch works again");
            self.last_logged = None;
            self.not_logged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_repeats_is_logged_once_a_minute() {
        let mut e = WatchErrors::new("Pod".into());
        let forbidden = "pods is forbidden: User cannot list resource \"pods\" (403)";
        assert!(e.failed(&forbidden), "the first failure is logged");
        let logged = (0..600).filter(|_| e.failed(&forbidden)).count();
        assert_eq!(logged, 0, "retries within the minute are counted, not logged");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(e.failed(&forbidden));
        assert!(!e.failed(&forbidden));
        // Once it works again, the next failure is news and logged at once.
        e.recovered();
        assert!(e.failed(&forbidden));
    }
}
