//! The actors of MIC and NMI (DESIGN.md): each owns one piece of state and talks only by messages.

pub mod mic;
pub mod nmi;
