//! NMI's HTTP surface (token endpoint, host token, metadata pass-through), probes and `/metrics`.

pub mod error;
pub mod nmi;
pub mod probes;
pub mod proxy;
pub mod request;
