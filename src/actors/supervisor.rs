//! Supervision of long-running tasks (watch loops, HTTP servers, reconcilers): a task that ends
//! or panics before shutdown is restarted with backoff; one that keeps dying, or one that cannot
//! be restarted, marks the process dead. A dead process says so on `/healthz` (answered 500, so
//! the kubelet restarts it) and [`Supervisor::died`] resolves, so the binary exits non-zero.
//!
//! Nothing here knows about NMI or MIC: a component names its tasks and hands over a factory
//! for each run; the supervisor owns the restart policy and the verdict.

use crate::backoff::Backoff;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How restarts are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A task may fail this many times within [`Self::window`] and be restarted; one more
    /// failure in the window is fatal.
    pub max_restarts: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// Delay before the first restart; doubled per consecutive failure.
    pub backoff: Duration,
    /// Longest delay before a restart.
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(300),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why the process is dead: the first task that failed for good.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task {task} died: {reason}")]
pub struct Death {
    /// The task's name.
    pub task: &'static str,
    /// What happened to its last run (it returned, or the panic message).
    pub reason: String,
}

struct Inner {
    policy: RestartPolicy,
    shutdown: CancellationToken,
    death: watch::Sender<Option<Death>>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

/// Owns a set of named tasks and the verdict on them. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("tasks", &self.task_names())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

/// Aborts a task when dropped, so aborting a supervising loop also ends the run it watches.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn describe(outcome: Result<(), tokio::task::JoinError>) -> String {
    match outcome {
        Ok(()) => "it returned".to_string(),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            format!("it panicked: {msg}")
        }
        Err(e) => format!("it was cancelled: {e}"),
    }
}

impl Supervisor {
    /// A supervisor with no tasks yet.
    #[must_use]
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                shutdown: CancellationToken::new(),
                death: watch::Sender::new(None),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Cancelled when shutdown starts; tasks that clean up on the way out watch it.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    fn push(&self, name: &'static str, handle: JoinHandle<()>) {
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tasks that ended on their own (retired ones) are forgotten, so a component that
        // starts and retires tasks for as long as it runs holds only the live ones.
        tasks.retain(|(_, h)| !h.is_finished());
        tasks.push((name, handle));
    }

    fn die(&self, task: &'static str, reason: String) {
        tracing::error!(task, %reason, "task failed for good; the process is dead");
        self.inner.death.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(Death { task, reason });
                true
            } else {
                false
            }
        });
    }

    /// As [`Supervisor::spawn`], for a task with nothing to clean up (a watch filling an index):
    /// it ends as soon as shutdown starts instead of holding the process for the whole grace
    /// period, which is for tasks that do clean up (iptables rules, the node taint).
    pub fn spawn_until_shutdown<F, Fut>(&self, name: &'static str, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let token = self.shutdown_token();
        self.spawn(name, move || {
            let (run, token) = (make(), token.clone());
            async move {
                tokio::select! {
                    () = run => {}
                    () = token.cancelled() => {}
                }
            }
        });
    }

    /// Runs `make()` as task `name`, restarting it with backoff whenever a run ends or panics
    /// before shutdown; more than [`RestartPolicy::max_restarts`] failures within the window
    /// make the process dead.
    pub fn spawn<F, Fut>(&self, name: &'static str, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let me = self.clone();
        let policy = self.inner.policy;
        let handle = tokio::spawn(async move {
            let mut failures: VecDeque<Instant> = VecDeque::new();
            let mut backoff = Backoff::new(policy.backoff, policy.max_backoff);
            loop {
                let started = Instant::now();
                let mut run = AbortOnDrop(tokio::spawn(make()));
                let outcome = (&mut run.0).await;
                if me.inner.shutdown.is_cancelled() {
                    return;
                }
                let reason = describe(outcome);
                let now = Instant::now();
                if now.duration_since(started) >= policy.window {
                    // It ran well for a whole window: start counting afresh.
                    failures.clear();
                    backoff.reset();
                }
                failures.retain(|t| now.duration_since(*t) < policy.window);
                failures.push_back(now);
                if failures.len() > policy.max_restarts as usize {
                    me.die(name, reason);
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(task = name, %reason, ?delay, "task ended; restarting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = me.inner.shutdown.cancelled() => return,
                }
            }
        });
        self.push(name, handle);
    }

    /// Runs `fut` as task `name`, which cannot be restarted (e.g. a server owning its
    /// listener): if it ends or panics before shutdown, the process is dead.
    pub fn spawn_once<Fut>(&self, name: &'static str, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, fut, true);
    }

    /// Watches `fut` as task `name`, which may end by itself (e.g. an actor its owner retired):
    /// its return is no failure, but a panic before shutdown makes the process dead, as the
    /// panic may have left shared state half-changed.
    pub fn spawn_retirable<Fut>(&self, name: &'static str, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, fut, false);
    }

    /// Runs `fut` once; a panic (or, when `ending_is_fatal`, any end) before shutdown makes the
    /// process dead.
    fn watch<Fut>(&self, name: &'static str, fut: Fut, ending_is_fatal: bool)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let me = self.clone();
        let handle = tokio::spawn(async move {
            let mut run = AbortOnDrop(tokio::spawn(fut));
            let outcome = (&mut run.0).await;
            if (ending_is_fatal || outcome.is_err()) && !me.inner.shutdown.is_cancelled() {
                me.die(name, describe(outcome));
            }
        });
        self.push(name, handle);
    }

    /// `Ok` while every task is alive (or being restarted), else the first death.
    ///
    /// # Errors
    /// The [`Death`] that made the process dead.
    pub fn health(&self) -> Result<(), Death> {
        self.inner.death.borrow().clone().map_or(Ok(()), Err)
    }

    /// Resolves when the process is dead, with the reason.
    pub async fn died(&self) -> Death {
        let mut rx = self.inner.death.subscribe();
        loop {
            if let Some(d) = rx.borrow_and_update().clone() {
                return d;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Names of the supervised tasks, in the order they were started.
    #[must_use]
    pub fn task_names(&self) -> Vec<&'static str> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, _)| *n)
            .collect()
    }

    /// Starts shutdown: cancels the token, gives tasks `grace` to end by themselves, then
    /// aborts the rest. Nothing that ends during shutdown counts as a failure.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        let tasks: Vec<(&'static str, JoinHandle<()>)> = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let deadline = Instant::now() + grace;
        for (name, mut handle) in tasks {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                tracing::debug!(task = name, "aborting task at shutdown");
                handle.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_with_backoff_and_the_process_stays_alive() {
        let sup = Supervisor::new(policy());
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        sup.spawn("flaky", move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run fails");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "no restart before the backoff"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(sup.health().is_ok());
        sup.shutdown(Duration::from_secs(1)).await;
        assert!(sup.health().is_ok(), "ending at shutdown is no failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_dying_makes_the_process_dead() {
        let sup = Supervisor::new(policy());
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        sup.spawn("watch-pods", move || {
            r.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        let death = tokio::time::timeout(Duration::from_secs(59), sup.died())
            .await
            .expect("dead within the window");
        assert_eq!(death.task, "watch-pods");
        assert_eq!(death.reason, "it returned");
        // The first run and three restarts (backoff 1 + 2 + 4 s).
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(sup.health(), Err(death));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_wider_than_the_window_are_forgiven() {
        let sup = Supervisor::new(RestartPolicy {
            max_restarts: 1,
            ..policy()
        });
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        sup.spawn("slow-failer", move || {
            r.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(61))
        });
        tokio::time::sleep(Duration::from_secs(61 * 5)).await;
        assert!(runs.load(Ordering::SeqCst) >= 4);
        assert!(sup.health().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_cannot_restart_is_fatal_at_once() {
        let sup = Supervisor::new(policy());
        sup.spawn_once("http-token", async { panic!("listener lost") });
        let death = sup.died().await;
        assert_eq!(death.task, "http-token");
        assert_eq!(death.reason, "it panicked: listener lost");
        assert_eq!(
            death.to_string(),
            "task http-token died: it panicked: listener lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retirable_task_may_end_but_not_panic() {
        let sup = Supervisor::new(policy());
        sup.spawn_retirable("assigner", async {});
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(sup.health().is_ok(), "a retired task is no failure");
        sup.spawn_retirable("assigner", async { panic!("half-done batch") });
        let death = tokio::time::timeout(Duration::from_secs(1), sup.died())
            .await
            .expect("a panic is fatal at once");
        assert_eq!(death.reason, "it panicked: half-done batch");
        assert_eq!(
            sup.task_names(),
            ["assigner"],
            "the retired one is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_without_cleanup_ends_when_shutdown_starts_not_after_the_grace() {
        let sup = Supervisor::new(policy());
        sup.spawn_until_shutdown("watch", std::future::pending::<()>);
        let started = Instant::now();
        sup.shutdown(Duration::from_secs(5)).await;
        // On the paused clock, waiting out the grace would advance time by the full 5 s.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(sup.health().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_tasks_clean_up_then_aborts_the_rest() {
        let sup = Supervisor::new(policy());
        let cleaned = Arc::new(AtomicU32::new(0));
        let (c, token) = (Arc::clone(&cleaned), sup.shutdown_token());
        sup.spawn_once("cleaner", async move {
            token.cancelled().await;
            c.fetch_add(1, Ordering::SeqCst);
        });
        sup.spawn("stubborn", std::future::pending::<()>);
        assert_eq!(sup.task_names(), ["cleaner", "stubborn"]);
        sup.shutdown(Duration::from_secs(2)).await;
        assert_eq!(cleaned.load(Ordering::SeqCst), 1);
        assert!(sup.health().is_ok());
    }
}
