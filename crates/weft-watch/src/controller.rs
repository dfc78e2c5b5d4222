//! The one shape of every control loop: wake on a change (or a resync timer), let a burst of
//! changes settle (debounce), run a pass over the caches, and on an error or a panic log it
//! with the controller's name, back off (bounded, exponential) and retry. Each controller is
//! its own loop: one that fails or panics never stops another.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;

/// Wakes every control loop listening: a change counter that each listener sees once, however
/// many changes came since it last looked (one `Notify` permit would wake one loop only).
#[derive(Clone, Debug)]
pub struct Wake(Arc<watch::Sender<u64>>);

impl Default for Wake {
    fn default() -> Self {
        Wake(Arc::new(watch::Sender::new(0)))
    }
}

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Something changed: every listener wakes (once).
    pub fn wake(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn listen(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A control loop, built then [`run`](Controller::run):
/// `Controller::new("endpoints").wake_on(&wake).resync(Duration::from_secs(2)).debounce(Duration::from_millis(20)).run(pass)`.
pub struct Controller {
    name: String,
    wake: Option<watch::Receiver<u64>>,
    resync: Option<Duration>,
    debounce: Duration,
    backoff_first: Duration,
    /// None: the resync period (a failed pass is retried no later than a resync would run
    /// it), else 30 s.
    backoff_max: Option<Duration>,
    shutdown: Shutdown,
}

impl Controller {
    /// A controller that runs one pass, then waits for what it is told to wake on.
    pub fn new(name: impl Into<String>) -> Controller {
        Controller {
            name: name.into(),
            wake: None,
            resync: None,
            debounce: Duration::ZERO,
            backoff_first: Duration::from_millis(100),
            backoff_max: None,
            shutdown: Box::pin(std::future::pending()),
        }
    }

    /// Runs a pass after each change `wake` reports.
    pub fn wake_on(mut self, wake: &Wake) -> Controller {
        self.wake = Some(wake.listen());
        self
    }

    /// Runs a pass when nothing has woken it for `every` (a level-triggered loop's safety net).
    pub fn resync(mut self, every: Duration) -> Controller {
        self.resync = Some(every);
        self
    }

    /// After a wake, waits `d` so that a burst of changes makes one pass.
    pub fn debounce(mut self, d: Duration) -> Controller {
        self.debounce = d;
        self
    }

    /// After a failed pass, waits `first`, doubling for each further failure up to `max`
    /// (by default 100 ms up to the resync period, or 30 s without one).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Controller {
        self.backoff_first = first;
        self.backoff_max = Some(max.max(first));
        self
    }

    /// Stops (between passes) when `shutdown` completes.
    pub fn until(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Controller {
        self.shutdown = Box::pin(shutdown);
        self
    }

    fn delay_after(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        let max = self.backoff_max.or(self.resync).unwrap_or(Duration::from_secs(30)).max(self.backoff_first);
        self.backoff_first.saturating_mul(factor).min(max)
    }

    /// Runs passes until the shutdown signal (never, without one). A pass that returns an
    /// error or panics is logged and retried after the backoff.
    pub async fn run(mut self, mut pass: impl AsyncFnMut() -> anyhow::Result<()>) {
        let mut failures = 0u32;
        loop {
            // Changes seen from here on are this pass's; later ones wake the next.
            if let Some(w) = self.wake.as_mut() {
                w.borrow_and_update();
            }
            match AssertUnwindSafe(pass()).catch_unwind().await {
                Ok(Ok(())) => {
                    if failures > 0 {
                        tracing::info!(controller = %self.name, failures, "pass succeeded again");
                    }
                    failures = 0;
                }
                Ok(Err(e)) => {
                    failures = failures.saturating_add(1);
                    let retry_in = self.delay_after(failures);
                    tracing::warn!(controller = %self.name, error = %format!("{e:#}"), failures, ?retry_in, "pass failed");
                }
                Err(panic) => {
                    failures = failures.saturating_add(1);
                    let retry_in = self.delay_after(failures);
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(controller = %self.name, panic = %what, failures, ?retry_in, "pass panicked");
                }
            }
            if failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(self.delay_after(failures)) => continue,
                    _ = &mut self.shutdown => return,
                }
            }
            if !self.wait().await {
                return;
            }
        }
    }

    /// Waits for a wake (then the debounce) or the resync timer; false on shutdown, or when
    /// nothing is left that could wake it.
    async fn wait(&mut self) -> bool {
        if self.wake.is_none() && self.resync.is_none() {
            tracing::debug!(controller = %self.name, "nothing wakes this controller: it stops");
            return false;
        }
        let woken = {
            let changed = async {
                match self.wake.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let timer = async {
                match self.resync {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ok = changed => Some(ok),
                _ = timer => None,
                _ = &mut self.shutdown => return false,
            }
        };
        match woken {
            // Every waker is gone: only the timer is left.
            Some(false) => {
                self.wake = None;
                return self.resync.is_some();
            }
            Some(true) if !self.debounce.is_zero() => {
                tokio::select! {
                    _ = tokio::time::sleep(self.debounce) => {}
                    _ = &mut self.shutdown => return false,
                }
            }
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::{Instant, sleep};

    fn counter() -> Arc<AtomicU32> {
        Arc::new(AtomicU32::new(0))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_makes_one_pass() {
        let (wake, passes) = (Wake::new(), counter());
        let p = passes.clone();
        let c = Controller::new("burst").wake_on(&wake).debounce(Duration::from_millis(20));
        tokio::spawn(c.run(async move || {
            p.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        sleep(Duration::from_millis(1)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "the first pass runs at once");
        for _ in 0..10 {
            wake.wake();
            sleep(Duration::from_millis(1)).await;
        }
        sleep(Duration::from_secs(10)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "ten changes within the debounce: one pass");
        wake.wake();
        sleep(Duration::from_millis(100)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn every_listener_wakes_and_the_timer_resyncs() {
        let wake = Wake::new();
        let (a, b) = (counter(), counter());
        for (n, resync) in [(a.clone(), None), (b.clone(), Some(Duration::from_secs(2)))] {
            let mut c = Controller::new("listener").wake_on(&wake);
            if let Some(r) = resync {
                c = c.resync(r);
            }
            tokio::spawn(c.run(async move || {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }));
        }
        sleep(Duration::from_millis(1)).await;
        wake.wake();
        sleep(Duration::from_millis(1)).await;
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (2, 2), "one wake reaches both");
        sleep(Duration::from_millis(4100)).await;
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (2, 4), "only the resyncing one ran again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_pass_backs_off_exponentially_and_retries() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let seen = calls.clone();
        let start = Instant::now();
        let c = Controller::new("flaky").backoff(Duration::from_millis(100), Duration::from_millis(300));
        tokio::spawn(c.run(async move || {
            let mut v = seen.lock().unwrap();
            v.push(Instant::now());
            if v.len() <= 4 { Err(anyhow::anyhow!("403 Forbidden")) } else { Ok(()) }
        }));
        sleep(Duration::from_secs(5)).await;
        let at: Vec<u128> = calls.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
        // 100, 200, then bounded at 300; after the success nothing wakes it again.
        assert_eq!(at, [0, 100, 300, 600, 900]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_pass_is_retried_no_later_than_its_resync() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        let seen = calls.clone();
        let start = Instant::now();
        tokio::spawn(Controller::new("resyncs").resync(Duration::from_secs(1)).run(async move || {
            seen.lock().unwrap().push(Instant::now());
            Err(anyhow::anyhow!("always"))
        }));
        sleep(Duration::from_millis(3600)).await;
        let at: Vec<u128> = calls.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
        assert_eq!(at, [0, 100, 300, 700, 1500, 2500, 3500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_pass_neither_kills_its_loop_nor_another() {
        let wake = Wake::new();
        let (bad, good) = (counter(), counter());
        let b = bad.clone();
        tokio::spawn(
            Controller::new("panics").wake_on(&wake).backoff(Duration::from_millis(50), Duration::from_secs(1)).run(
                async move || {
                    if b.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("a bug in a pass");
                    }
                    Ok(())
                },
            ),
        );
        let g = good.clone();
        tokio::spawn(Controller::new("fine").wake_on(&wake).run(async move || {
            g.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        sleep(Duration::from_secs(1)).await;
        assert_eq!(bad.load(Ordering::SeqCst), 4, "three panics, each retried");
        wake.wake();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(bad.load(Ordering::SeqCst), 5, "the loop that panicked still answers wakes");
        assert_eq!(good.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_loop_between_passes() {
        let (wake, passes) = (Wake::new(), counter());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let p = passes.clone();
        let task = tokio::spawn(
            Controller::new("stops")
                .wake_on(&wake)
                .resync(Duration::from_secs(1))
                .until(async move {
                    let _ = stopped.await;
                })
                .run(async move || {
                    p.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
        );
        sleep(Duration::from_millis(1500)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stopped").unwrap();
        wake.wake();
        sleep(Duration::from_secs(5)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_whose_wakers_are_gone_keeps_its_timer_or_stops() {
        let wake = Wake::new();
        let passes = counter();
        let p = passes.clone();
        let task = tokio::spawn(Controller::new("orphan").wake_on(&wake).run(async move || {
            p.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        sleep(Duration::from_millis(1)).await;
        drop(wake);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("nothing can wake it: it stops").unwrap();
        assert_eq!(passes.load(Ordering::SeqCst), 1);
    }
}
