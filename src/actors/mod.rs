//! The owners of MIC's and NMI's state (DESIGN.md), of two kinds:
//!
//! - **actix actors** in MIC: the coordinator (the binding matcher index), one assigner per VM or
//!   scale set (group commit, one ARM write in flight) and the assigned-identity writer. Their
//!   state changes by messages from several senders and their I/O must stay ordered, so each
//!   holds `Recipient<M>` of the others and talks only by messages.
//! - **tasks that own one index**: every watch loop ([`crate::kube_watch`] streams), MIC's leader
//!   election and NMI coverage, and all of NMI (pods by IP, per-pod identities, exceptions,
//!   iptables, the node gate). A task is the only writer of its index; NMI's HTTP workers read
//!   the indexes in place, so a token request costs no mailbox hop (the broker still authorizes
//!   every request before the cache). NMI's token cache is filled by the requests themselves,
//!   one single-flight slot per (identity, resource).
//!
//! [`supervisor`] restarts the long-running tasks of either and decides when the process is
//! dead. The processes that wire these owners to their servers are [`mod@mic::run`] and
//! [`crate::nmi`]; `docs/architecture.md` has the picture.

#[cfg(test)]
pub(crate) mod fixtures;
pub mod mic;
pub mod nmi;
pub mod supervisor;
