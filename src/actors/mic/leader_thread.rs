//! Leader election on an OS thread of its own, with its own current-thread tokio runtime and
//! its own Kubernetes client, so MIC's actor thread (one thread for every actor) cannot starve
//! a renewal however long it computes. client-go renews from a goroutine that Go's preemptive
//! scheduler always runs; this is the same guarantee.
//!
//! The client is built on the election thread because a kube client belongs to the runtime it
//! was built on: its request buffer's worker task is spawned there, and a client built on the
//! actor thread would route every renewal through that thread again.
//!
//! The rest of MIC learns of leadership through a `watch` channel ([`Leadership`]). A leader
//! steps down exactly as before (renewal not done within the renew deadline), and also when the
//! actor thread's [`Heartbeat`] is stalled past its limit, so a wedged MIC does not hold the
//! lease for good.
//!
//! The actor thread learns of a step-down only when it next runs, which after a long stretch
//! of work can be later than another replica may take over. [`super::fence`] closes that gap
//! for every write (ARM PATCHes, AzureAssignedIdentity and Event writes): each is sent only
//! while the election thread says this replica leads.

use super::heartbeat::Heartbeat;
use super::leader::{Error, LeaderElector, LeaderSettings};
use tokio::sync::{oneshot, watch};

/// Where this replica stands in the election.
#[derive(Clone, Debug)]
pub enum Leadership {
    /// Waiting to lead.
    Candidate,
    /// Holding every lock.
    Leading,
    /// Led and stopped (or the election thread failed): never leads again in this process.
    SteppedDown(Error),
}

/// The election thread; dropping this stops it (it stops renewing; the lease then expires).
pub struct ElectionThread {
    state: watch::Receiver<Leadership>,
    _stop: oneshot::Sender<()>,
}

impl ElectionThread {
    /// Starts the election thread for `settings`, with a client from `client` (called on that
    /// thread, inside its runtime) and, when given, making no attempt while `heartbeat` is
    /// stalled.
    ///
    /// # Errors
    /// When the OS refuses a thread.
    pub fn spawn(
        settings: LeaderSettings,
        heartbeat: Option<Heartbeat>,
        client: impl FnOnce() -> Result<kube::Client, String> + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, state) = watch::channel(Leadership::Candidate);
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("mic-leader-{}", settings.instance))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Leadership::SteppedDown(Error::Thread(e.to_string())));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match client() {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Leadership::SteppedDown(Error::Thread(e)));
                            return;
                        }
                    };
                    let mut elector = LeaderElector::new(client, settings);
                    if let Some(hb) = heartbeat {
                        elector = elector.watching(hb);
                    }
                    let elect = async {
                        elector.acquire().await;
                        let _ = tx.send(Leadership::Leading);
                        let lost = elector.hold().await;
                        let _ = tx.send(Leadership::SteppedDown(lost));
                    };
                    tokio::select! {
                        () = elect => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self { state, _stop: stop })
    }

    /// The election's state, for anything that must check leadership itself.
    #[must_use]
    pub fn state(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Waits until this replica leads.
    ///
    /// # Errors
    /// Why it never will (the election thread failed).
    pub async fn leading(&mut self) -> Result<(), Error> {
        let result = self
            .state
            .wait_for(|s| !matches!(s, Leadership::Candidate))
            .await
            .map(|s| s.clone());
        match result {
            Ok(Leadership::Leading) => Ok(()),
            Ok(Leadership::SteppedDown(e)) => Err(e),
            Ok(Leadership::Candidate) => unreachable!("waited for another state"),
            Err(_) => Err(ended()),
        }
    }

    /// Waits until this replica is no longer leader; why.
    pub async fn stepped_down(&mut self) -> Error {
        let result = self
            .state
            .wait_for(|s| matches!(s, Leadership::SteppedDown(_)))
            .await
            .map(|s| s.clone());
        match result {
            Ok(Leadership::SteppedDown(e)) => e,
            Ok(_) => unreachable!("waited for SteppedDown"),
            Err(_) => ended(),
        }
    }
}

fn ended() -> Error {
    Error::Thread("the election thread ended".into())
}
