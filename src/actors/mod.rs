//! The actors of MIC and NMI (DESIGN.md): each owns one piece of state and talks only by messages.
//! [`supervisor`] restarts the long-running tasks of either and decides when the process is dead.

#[cfg(test)]
pub(crate) mod fixtures;
pub mod mic;
pub mod nmi;
pub mod supervisor;
