//! AAD Pod Identity in Rust: the library behind the `aad-pod-identity` binary.
//!
//! The binary is thin; everything testable lives here. Module map:
//! - [`cli`]: the binary's subcommands.
//! - [`crd`]: the `aadpodidentity.k8s.io/v1` custom resources, wire-compatible with the Go original.
//! - [`config`]: typed flags for `mic` and `nmi` (clap derive, env equivalents).
//! - [`cloud`]: Azure clients (ARM, metadata service, Azure AD) and cloud configuration.
//! - [`actors`]: the actix actors of MIC and NMI.
//! - [`http`]: NMI's HTTP surface, probes and the metrics endpoint.
//! - [`metrics`]: the one Prometheus registry and every metric the system records.
//! - [`logging`]: tracing-subscriber setup (text or JSON).
//! - [`sim`]: the Kubernetes API and Azure simulators used by the sandbox and the tests.
//! - [`sandbox`]: the whole system on one machine.
//! - [`loadtest`]: load scenarios against the sandbox, with reports.

pub mod actors;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod crd;
pub mod http;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod sandbox;
pub mod sim;
