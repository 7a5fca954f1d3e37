//! Background tasks that must not die quietly.
//!
//! A panic in a supervised task is logged, counted (`gateway_task_restarts_total{task}`) and the
//! task is started again after a pause that grows with repeated failures (100 ms doubling to
//! 10 s; back to 100 ms once a run lasted a minute). The task ends for good only when it returns
//! or `shutdown` is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Stats;

/// A background task that can be started again: each call returns a fresh run of it.
pub type Restartable = Box<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// A run this long counts as healthy: the next failure starts the pauses over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `make()` until it returns, starting it again whenever it panics.
pub async fn supervise<F, Fut>(task: &'static str, stats: Arc<Stats>, shutdown: CancellationToken, make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = FIRST_PAUSE;
    loop {
        let started = Instant::now();
        let error = match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(error) if error.is_panic() => error,
            // Cancelled: the runtime is going away.
            Err(_) => return,
        };
        let panic = error.into_panic();
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        if started.elapsed() >= HEALTHY_RUN {
            pause = FIRST_PAUSE;
        }
        stats.task_restarted(task, &message, pause);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let stats = Arc::new(Stats::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        supervise("test", stats.clone(), CancellationToken::new(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    panic!("boom {n}");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "three panics, then a clean run");
        assert_eq!(Stats::get(&stats.task_restarts), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_restarts() {
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        supervise("test", stats.clone(), shutdown, || async { panic!("always") }).await;
        assert_eq!(Stats::get(&stats.task_restarts), 1);
    }
}
