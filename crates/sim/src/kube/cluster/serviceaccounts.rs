//! The service-account controller's one job that matters here: every namespace has a service
//! account named `default` (pods that name none run as it, and a TokenRequest for it must find
//! it). Created when a namespace appears without one, and again if it is deleted while the
//! namespace lives, as the real controller does. Woken by the store's change notifications.

use std::sync::Arc;

use serde_json::json;

use super::{Feed, Update, info, terminating};
use crate::kube::Shared;
use crate::kube::meta::name_of;

/// Creates the `default` service account of every live namespace that lacks one.
fn ensure_defaults(shared: &Shared) {
    let namespaces = info(shared, "", "namespaces");
    let sas = info(shared, "", "serviceaccounts");
    let (all, _) = shared.store.snapshot(&namespaces.gr());
    for ns in all.iter().filter(|n| !terminating(n)) {
        let name = name_of(ns);
        if shared.store.get(&sas, name, "default").is_err() {
            // A concurrent create (or a namespace going away) makes this fail harmlessly.
            let _ = shared
                .store
                .create(&sas, name, json!({"metadata": {"name": "default"}}));
        }
    }
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut namespaces = Feed::new(shared.store.clone(), "", "namespaces");
    let mut accounts = Feed::new(shared.store.clone(), "", "serviceaccounts");
    loop {
        let ns_changed = !matches!(namespaces.take(), Update::Events(e) if e.is_empty());
        let sa_changed = !matches!(accounts.take(), Update::Events(e) if e.is_empty());
        if ns_changed || sa_changed {
            ensure_defaults(&shared);
        }
        tokio::select! {
            () = namespaces.wait() => {}
            () = accounts.wait() => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}
