//! MIC's actors started under the process's [`Supervisor`], so that none can die silently.
//!
//! An actix actor that panics or stops takes its mailbox with it; senders that `do_send` never
//! notice, and MIC would go on saying `Active` while no pod is ever assigned again. Each actor
//! here runs as a task whose end the supervisor watches: the writer and the coordinator must
//! live as long as MIC leads (their end is MIC's death), an assigner may be retired by its
//! owner but must not panic. MIC does not restart a dead actor in place (its peers hold the
//! old address and its state is lost); it stops leading and exits non-zero, and the kubelet's
//! restart, a relist and the reconcile from ARM's state rebuild everything.

use crate::actors::supervisor::Supervisor;
use actix::{Actor, Addr, AsyncContext, Context};

/// Re-raises a panic of the actor's task in the supervisor's task, so the verdict names it.
async fn watch(handle: tokio::task::JoinHandle<()>) {
    if let Err(e) = handle.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Starts `actor` on the current arbiter; its end, however it ends, makes the process dead.
pub fn start_vital<A>(supervisor: &Supervisor, name: &'static str, actor: A) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
{
    let (addr, ended) = start(actor);
    supervisor.spawn_once(name, ended);
    addr
}

/// Starts `actor` on the current arbiter; it may stop (retired), but a panic makes the
/// process dead.
pub fn start_retirable<A>(supervisor: &Supervisor, name: &'static str, actor: A) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
{
    let (addr, ended) = start(actor);
    supervisor.spawn_retirable(name, ended);
    addr
}

/// Starts `actor` as [`Actor::start`] does, and returns with its address a future that ends
/// when the actor does (re-raising its panic).
fn start<A>(
    actor: A,
) -> (
    Addr<A>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    A: Actor<Context = Context<A>>,
{
    let ctx = Context::new();
    let addr = ctx.address();
    (addr, watch(actix::spawn(ctx.into_future(actor))))
}
