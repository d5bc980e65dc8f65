//! Discovery (`/version`, `/api`, `/apis`, group and group-version resource lists), health
//! endpoints, and the OpenAPI documents kubectl consults before `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Value, json};

use super::Shared;
use super::meta::ApiError;
use super::resources::ResourceInfo;
use super::wire::json_response;

/// Kubernetes version the simulator claims (kube-rs's and kubectl's supported range).
pub const MINOR: &str = "33";

fn verbs() -> Value {
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

fn resource_entry(i: &ResourceInfo) -> Value {
    let mut e = json!({
        "name": i.plural,
        "singularName": i.singular,
        "namespaced": i.namespaced,
        "kind": i.kind,
        "verbs": verbs(),
    });
    if !i.short_names.is_empty() {
        e["shortNames"] = json!(i.short_names);
    }
    if !i.categories.is_empty() {
        e["categories"] = json!(i.categories);
    }
    e
}

fn resource_list(group_version: &str, infos: &[Arc<ResourceInfo>]) -> Value {
    let mut resources = Vec::new();
    for i in infos {
        resources.push(resource_entry(i));
        if i.has_scale() {
            resources.push(json!({
                "name": format!("{}/scale", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if i.has_eviction() {
            resources.push(json!({
                "name": format!("{}/eviction", i.plural),
                "singularName": "",
                "namespaced": true,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }));
        }
        if i.has_token() {
            resources.push(json!({
                "name": format!("{}/token", i.plural),
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
        if i.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "kind": i.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// Groups and their versions, preferred (first stable, else first) version first.
fn groups(shared: &Shared) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in shared.registry.all() {
        if i.group.is_empty() {
            continue;
        }
        let vs = out.entry(i.group.clone()).or_default();
        if !vs.contains(&i.version) {
            vs.push(i.version.clone());
        }
    }
    for vs in out.values_mut() {
        vs.sort_by_key(|v| (v.contains("alpha") || v.contains("beta"), v.clone()));
    }
    out
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(json!({})),
    })
}

/// Answers discovery, health and OpenAPI paths; `None` for anything else.
pub fn handle(
    shared: &Shared,
    req: &HttpRequest,
    path: &str,
) -> Result<Option<HttpResponse>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |v: Value| Ok(Some(json_response(StatusCode::OK, &v)));
    match segs.as_slice() {
        ["version"] => ok(json!({
            "major": "1",
            "minor": MINOR,
            "gitVersion": format!("v1.{MINOR}.0-aad-pod-identity-sim"),
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["healthz" | "livez" | "readyz"] => Ok(Some(
            HttpResponse::Ok().content_type("text/plain").body("ok"),
        )),
        ["api"] => {
            let host = req.connection_info().host().to_string();
            ok(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }))
        }
        ["api", "v1"] => {
            let infos: Vec<_> = shared
                .registry
                .all()
                .into_iter()
                .filter(|i| i.group.is_empty() && i.version == "v1")
                .collect();
            ok(resource_list("v1", &infos))
        }
        ["apis"] => {
            let gs: Vec<Value> = groups(shared)
                .iter()
                .map(|(g, vs)| group_entry(g, vs))
                .collect();
            ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}))
        }
        ["apis", g] => match groups(shared).get(*g) {
            Some(vs) => {
                let mut e = group_entry(g, vs);
                e["kind"] = json!("APIGroup");
                e["apiVersion"] = json!("v1");
                ok(e)
            }
            None => Err(ApiError::no_route(path)),
        },
        ["apis", g, v] => {
            let infos: Vec<_> = shared
                .registry
                .all()
                .into_iter()
                .filter(|i| i.group == *g && i.version == *v)
                .collect();
            if infos.is_empty() {
                return Err(ApiError::no_route(path));
            }
            ok(resource_list(&format!("{g}/{v}"), &infos))
        }
        ["openapi", ..] => super::discovery::openapi(shared, &segs[1..], path).map(Some),
        _ => Ok(None),
    }
}

/// OpenAPI v3, just enough for kubectl: an index of group-versions, and per group-version
/// a PATCH operation per resource that carries the group-version-kind and declares the
/// `fieldValidation` query parameter. kubectl then leaves validation to the server (it sends
/// `fieldValidation=Strict`) instead of downloading schemas. The PATCH operations declare no
/// request body, so kubectl's apply computes strategic merge patches from its compiled-in
/// types for built-ins and JSON merge patches for custom resources, as with a real server.
/// OpenAPI v2 is not served.
fn openapi(shared: &Shared, segs: &[&str], path: &str) -> Result<HttpResponse, ApiError> {
    let infos = shared.registry.all();
    let gv_key = |i: &ResourceInfo| {
        if i.group.is_empty() {
            format!("api/{}", i.version)
        } else {
            format!("apis/{}/{}", i.group, i.version)
        }
    };
    match segs {
        ["v3"] => {
            let mut paths = serde_json::Map::new();
            for i in &infos {
                let k = gv_key(i);
                let url = format!("/openapi/v3/{k}?hash=sim{}", infos.len());
                paths.insert(k, json!({"serverRelativeURL": url}));
            }
            Ok(json_response(StatusCode::OK, &json!({"paths": paths})))
        }
        ["v3", rest @ ..] => {
            let key = rest.join("/");
            let mine: Vec<_> = infos.iter().filter(|i| gv_key(i) == key).collect();
            if mine.is_empty() {
                return Err(ApiError::no_route(path));
            }
            let mut paths = serde_json::Map::new();
            for i in mine {
                let prefix = if i.group.is_empty() {
                    format!("/api/{}", i.version)
                } else {
                    format!("/apis/{}/{}", i.group, i.version)
                };
                let item = if i.namespaced {
                    format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", i.plural)
                } else {
                    format!("{prefix}/{}/{{name}}", i.plural)
                };
                let gvk = json!({"group": i.group, "version": i.version, "kind": i.kind});
                paths.insert(
                    item,
                    json!({"patch": {
                        "operationId": format!("patch{}", i.kind),
                        "x-kubernetes-action": "patch",
                        "x-kubernetes-group-version-kind": gvk,
                        "parameters": [
                            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                        ],
                        "responses": {"200": {"description": "OK"}}
                    }}),
                );
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
                    "paths": paths,
                    "components": {"schemas": {}},
                }),
            ))
        }
        _ => Err(ApiError::no_route(path)),
    }
}
