//! AAD Pod Identity in Rust: the library behind the `aad-pod-identity` binary.
//!
//! The binary is thin; everything testable lives here. Module map:
//! - [`cli`]: the binary's subcommands.
//! - [`crd`]: the `aadpodidentity.k8s.io/v1` custom resources, wire-compatible with the Go original.
//! - [`config`]: typed flags for `mic` and `nmi` (clap derive, env equivalents).
//! - [`cloud`]: Azure clients (ARM, metadata service, Azure AD) and cloud configuration.
//! - [`backoff`]: exponential backoff, the one helper every retry loop uses.
//! - [`actors`]: the actix actors of MIC and NMI.
//! - [`kube_client`]: Kubernetes clients (kubeconfig, User-Agent, `--clientQps`).
//! - [`kube_watch`]: list-then-watch of Kubernetes objects, the feed of every index.
//! - [`http`]: NMI's HTTP surface, probes and the metrics endpoint.
//! - [`metrics`]: the one Prometheus registry and every metric the system records.
//! - [`nmi`]: the `nmi` process, wiring NMI's owners to its HTTP surface.
//! - [`object_key`]: `namespace/name` of a Kubernetes object, the key MIC and NMI index by.
//! - [`logging`]: tracing-subscriber setup (text or JSON).
//! - [`version`]: version, commit and build date; the User-Agent.
//!
//! The simulators (`crates/sim`) and the sandbox with the load-test driver (`crates/sandbox`) are
//! member crates of the workspace beside this one; nothing of them is in this crate's binary.

pub mod actors;
pub mod backoff;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod crd;
pub mod http;
pub mod kube_client;
pub mod kube_watch;
pub mod logging;
pub mod metrics;
pub mod nmi;
pub mod object_key;
pub mod version;
