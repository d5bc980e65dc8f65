//! The REST surface: routes every request by path (discovery, OpenAPI, resource paths),
//! applies injected faults, parses bodies with a size limit, and renders results and errors
//! as Kubernetes JSON (lists, Tables, Status).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};

use super::Shared;
use super::convert;
use super::discovery;
use super::meta::{ApiError, name_of};
use super::patch::{self, PatchKind};
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::store::DeleteOptions;
use super::table::{self, TableOptions};
use super::watch::{self, WatchParams};
use super::wire::{Query, error_response, json_response, parse_query, write_object};

/// Builds the actix-web server on an already bound listener.
pub fn server(
    shared: Arc<Shared>,
    listener: TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let workers = shared.config.workers.max(1);
    let data = web::Data::from(shared);
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(web::to(dispatch))
    })
    .workers(workers)
    .h1_write_buffer_size(super::watch::CHUNK)
    // The API server keeps idle HTTP/1.1 connections open (Go's server has no idle timeout
    // unless one is set); actix's default of 5 s closed them under clients whose pools keep
    // them for 90 s (hyper's default), and a request racing the close failed with an
    // incomplete message, which a real API server never causes.
    .keep_alive(std::time::Duration::from_secs(300))
    // The API server is Go's net/http, whose TCP connections have Nagle's algorithm off (Go's
    // default); with it on (the OS default actix keeps), a watch that writes two small chunks
    // in a row holds the second until the reader acknowledges the first, which a reader that
    // only reads does after its delayed-ACK timer (about 40 ms): seen in a burst as 37-41 ms
    // gaps in a node's watch (docs/performance.md, the wake-up).
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    shared.clients.record(
        req.headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let write = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let write_latency = shared.faults.write_latency();
    if write && !write_latency.is_zero() {
        tokio::time::sleep(write_latency).await;
    }
    if let Some(code) = shared.faults.take_failure() {
        return error_response(&ApiError::injected(code));
    }
    let shared = shared.into_inner();
    match route(&req, payload, &shared).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// A parsed resource path.
struct Target {
    info: Arc<ResourceInfo>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_prefix: bool,
}

fn parse_resource_path(shared: &Shared, path: &str) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let (watch_prefix, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    // `namespaces/<ns>/<plural>/...` is a namespaced path unless it addresses a namespace's
    // own subresource (`namespaces/<ns>/status`).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, r @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(r);
                v
            })
        }
        r => (None, r.to_vec()),
    };
    let Some(plural) = rest.first() else {
        return Ok(None);
    };
    let info = shared
        .registry
        .get(group, version, plural)
        .ok_or_else(|| ApiError::no_route(path))?;
    if namespace.is_some() && !info.namespaced {
        return Err(ApiError::no_route(path));
    }
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return Err(ApiError::no_route(path));
    }
    Ok(Some(Target {
        info,
        namespace,
        name,
        subresource,
        watch_prefix,
    }))
}

async fn route(
    req: &HttpRequest,
    payload: web::Payload,
    shared: &Arc<Shared>,
) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    let mut query = parse_query(req.query_string());
    if let Some(r) = discovery::handle(shared, req, path)? {
        return Ok(r);
    }
    if let Some(r) = super::sa_token::handle(shared, req, path) {
        return Ok(r);
    }
    let Some(target) = parse_resource_path(shared, path)? else {
        return Err(ApiError::no_route(path));
    };
    if let Some(sub) = &target.subresource
        && !(sub == "status" && target.info.status_subresource)
        && !(sub == "scale" && target.info.has_scale())
        && !(sub == "eviction" && target.info.has_eviction())
        && !(sub == "token" && target.info.has_token())
    {
        return Err(ApiError::no_route(path));
    }
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let info = target.info.clone();
    if info.converted()
        && let Some(fs) = query.get_mut("fieldSelector")
    {
        *fs = convert::event_field_selector_to_core(fs);
    }
    // Bodies of converted resources are stored in the storage group's form.
    let to_storage = |v: Value| {
        if info.converted() {
            convert::event_to_core(&v)
        } else {
            v
        }
    };
    let ns = target.namespace.clone().unwrap_or_default();
    if info.namespaced && target.namespace.is_none() && target.name.is_some() {
        return Err(ApiError::no_route(path));
    }
    let store = &shared.store;
    let method = req.method().clone();
    if target.subresource.as_deref() == Some("scale")
        && let Some(name) = target.name.as_deref()
    {
        let body = read_body(payload, shared.config.max_body_bytes).await?;
        return scale(shared, &info, &ns, name, &method, &body, &content_type);
    }
    if target.subresource.as_deref() == Some("eviction")
        && let Some(name) = target.name.as_deref()
    {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method ({method}) on the eviction subresource"
            )));
        }
        let body = read_body(payload, shared.config.max_body_bytes).await?;
        let eviction = parse_object(&body, &content_type)?;
        let status = super::eviction::evict(shared, &ns, name, &eviction)?;
        return Ok(json_response(StatusCode::CREATED, &status));
    }
    if target.subresource.as_deref() == Some("token")
        && let Some(name) = target.name.as_deref()
    {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method ({method}) on the token subresource"
            )));
        }
        let body = read_body(payload, shared.config.max_body_bytes).await?;
        let request = parse_object(&body, &content_type)?;
        let answer = super::sa_token::create(shared, &ns, name, &request)?;
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    let is_watch =
        target.watch_prefix || matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if matches!(method, Method::PUT | Method::PATCH | Method::DELETE)
        && let Some(name) = target.name.as_deref()
        && let Some(e) = shared.faults.refusal(&info, &ns, name)
    {
        return Err(e);
    }
    match (method, target.name.as_deref()) {
        (Method::GET, _) if is_watch => {
            let mut q = query.clone();
            if let Some(n) = &target.name {
                let fs = q.entry("fieldSelector".into()).or_default();
                if !fs.is_empty() {
                    fs.push(',');
                }
                fs.push_str(&format!("metadata.name={n}"));
            }
            let params = watch_params(shared, info, target.namespace.clone(), &q, &accept)?;
            Ok(watch::respond(shared.clone(), params))
        }
        (Method::GET, None) => {
            let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))?;
            let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", |s| s))?;
            let limit = match query.get("limit") {
                Some(l) => Some(
                    l.parse::<usize>()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
                ),
                None => None,
            };
            let list = store.list(
                &info,
                target.namespace.as_deref(),
                &labels,
                &fields,
                limit,
                query.get("continue").map(String::as_str),
            )?;
            if let Some(opts) = TableOptions::from_request(&accept, &query) {
                let t = table::table(
                    &info,
                    &list.items,
                    &opts,
                    Some(list.resource_version),
                    list.continue_token.as_deref(),
                );
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(list_response(&info, &list))
        }
        (Method::GET, Some(name)) => {
            let obj = store.get(&info, &ns, name)?;
            if let Some(opts) = TableOptions::from_request(&accept, &query) {
                let t = table::table(&info, std::slice::from_ref(&obj), &opts, None, None);
                return Ok(json_response(StatusCode::OK, &t));
            }
            Ok(object_response(StatusCode::OK, &info, &obj))
        }
        (Method::POST, None) => {
            let body = read_body(payload, shared.config.max_body_bytes).await?;
            let obj = to_storage(parse_object(&body, &content_type)?);
            let name = obj
                .pointer("/metadata/name")
                .or_else(|| obj.pointer("/metadata/generateName"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(e) = shared.faults.refusal(&info, &ns, name) {
                return Err(e);
            }
            if dry_run(&query) {
                return Ok(object_response(StatusCode::CREATED, &info, &Arc::new(obj)));
            }
            let named = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(n) = &named {
                shared.writes.record(&info.plural, &ns, n);
            }
            let created = store.create(&info, &ns, obj)?;
            if named.is_none() {
                // generateName: the object is known by the name the store gave it.
                shared.writes.record(&info.plural, &ns, name_of(&created));
            }
            Ok(object_response(StatusCode::CREATED, &info, &created))
        }
        (Method::PUT, Some(name)) => {
            shared.writes.record(&info.plural, &ns, name);
            let body = read_body(payload, shared.config.max_body_bytes).await?;
            let obj = to_storage(parse_object(&body, &content_type)?);
            let status_only = target.subresource.is_some();
            let updated = store.update(&info, &ns, name, obj, status_only)?;
            Ok(object_response(StatusCode::OK, &info, &updated))
        }
        (Method::PATCH, Some(name)) => {
            shared.writes.record(&info.plural, &ns, name);
            let kind = PatchKind::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            let body = read_body(payload, shared.config.max_body_bytes).await?;
            let p: Value = if kind == PatchKind::Apply {
                parse_yaml_or_json(&body)?
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?
            };
            let status_only = target.subresource.is_some();
            let result = store.update_with(&info, &ns, name, status_only, |cur| {
                // A patch applies to the object as the client sees it.
                let mut next = if info.converted() {
                    convert::event_from_core(cur)
                } else {
                    cur.clone()
                };
                patch::apply(kind, &mut next, &p)?;
                Ok(to_storage(next))
            });
            match result {
                Err(e) if e.code == 404 && kind == PatchKind::Apply && !status_only => {
                    // Server-side apply creates what does not exist yet.
                    let created = store.create(&info, &ns, to_storage(p))?;
                    Ok(object_response(StatusCode::CREATED, &info, &created))
                }
                Err(e) => Err(e),
                Ok(o) => Ok(object_response(StatusCode::OK, &info, &o)),
            }
        }
        (Method::DELETE, Some(name)) => {
            shared.writes.record(&info.plural, &ns, name);
            let body = read_body(payload, shared.config.max_body_bytes).await?;
            let opts = delete_options(&body, &query, &content_type)?;
            let obj = store.delete(&info, &ns, name, &opts)?;
            Ok(object_response(StatusCode::OK, &info, &obj))
        }
        (Method::DELETE, None) => {
            let body = read_body(payload, shared.config.max_body_bytes).await?;
            let opts = delete_options(&body, &query, &content_type)?;
            let labels = LabelSelector::parse(query.get("labelSelector").map_or("", |s| s))?;
            let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", |s| s))?;
            let list = store.list(
                &info,
                target.namespace.as_deref(),
                &labels,
                &fields,
                None,
                None,
            )?;
            for o in &list.items {
                let ons = super::meta::namespace_of(o).to_string();
                match store.delete(&info, &ons, name_of(o), &opts) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(list_response(&info, &list))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method ({m}) on the requested resource"
        ))),
    }
}

/// The autoscaling/v1 Scale view of an object with `spec.replicas`.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// GET, PUT and PATCH of the `/scale` subresource: only `spec.replicas` changes.
fn scale(
    shared: &Shared,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
    method: &Method,
    body: &[u8],
    content_type: &str,
) -> Result<HttpResponse, ApiError> {
    let store = &shared.store;
    if *method == Method::GET {
        let obj = store.get(info, ns, name)?;
        return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
    }
    let (patch_kind, body): (Option<PatchKind>, Value) = match *method {
        Method::PUT => (None, parse_object(body, content_type)?),
        Method::PATCH => {
            let kind = PatchKind::from_content_type(content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
            let p = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
            (Some(kind), p)
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method ({method}) on the scale subresource"
            )));
        }
    };
    let updated = store.update_with(info, ns, name, false, |cur| {
        let mut s = scale_of(cur);
        match patch_kind {
            Some(k) => patch::apply(k, &mut s, &body)?,
            None => s = body,
        }
        if let Some(rv) = s.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(rv) != cur.pointer("/metadata/resourceVersion").and_then(Value::as_str)
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let replicas = s
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .filter(|r| *r >= 0)
            .ok_or_else(|| {
                ApiError::invalid("autoscaling", "Scale", name, "spec.replicas: Invalid value: must be a non-negative integer")
            })?;
        let mut n = cur.clone();
        n["spec"]["replicas"] = json!(replicas);
        Ok(n)
    })?;
    Ok(json_response(StatusCode::OK, &scale_of(&updated)))
}

fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

fn watch_params(
    shared: &Shared,
    info: Arc<ResourceInfo>,
    namespace: Option<String>,
    q: &Query,
    accept: &str,
) -> Result<WatchParams, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", |s| s))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", |s| s))?;
    let since = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    // Capped at a day: a deadline must stay representable as an Instant.
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?
                .min(86_400),
        ),
        None => Duration::from_secs(1800),
    };
    Ok(WatchParams {
        info,
        namespace: namespace.filter(|n| !n.is_empty()),
        labels,
        fields,
        since,
        send_initial_events: q.get("sendInitialEvents").is_some_and(|v| v == "true"),
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        bookmark_interval: shared.config.bookmark_interval,
        timeout,
        table: TableOptions::from_request(accept, q),
    })
}

/// A DELETE's options: its body (JSON, YAML or the protobuf typed clients such as `kubectl drain`
/// send) or, without a body, the query parameters.
fn delete_options(body: &[u8], q: &Query, content_type: &str) -> Result<DeleteOptions, ApiError> {
    let mut body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_object(body, content_type).map_err(|mut e| {
            e.message = format!("invalid DeleteOptions: {}", e.message);
            e
        })?
    };
    if body.get("propagationPolicy").is_none()
        && let Some(p) = q.get("propagationPolicy")
    {
        body["propagationPolicy"] = json!(p);
    }
    super::eviction::delete_options(&body)
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn parse_yaml_or_json(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))
}

fn parse_object(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let base = content_type.split(';').next().unwrap_or("").trim();
    let v: Value = match base {
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml_or_json(body)?,
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body)?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?,
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn object_response(status: StatusCode, info: &ResourceInfo, obj: &Arc<Value>) -> HttpResponse {
    let mut out = Vec::with_capacity(1024);
    write_object(&mut out, info, obj);
    HttpResponse::build(status)
        .content_type("application/json")
        .body(out)
}

fn list_response(info: &ResourceInfo, list: &super::store::ListResult) -> HttpResponse {
    let mut out = Vec::with_capacity(256 + list.items.len() * 1024);
    let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
    if let Some(c) = &list.continue_token {
        meta["continue"] = json!(c);
        if let Some(r) = list.remaining {
            meta["remainingItemCount"] = json!(r);
        }
    }
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            info.kind,
            info.api_version(),
            meta
        )
        .as_bytes(),
    );
    let av = info.api_version();
    for (i, item) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match list.encodings.get(i) {
            Some(cell)
                if !info.converted()
                    && item.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) =>
            {
                out.extend_from_slice(super::store::encode_cached(cell, item));
            }
            _ => write_object(&mut out, info, item),
        }
    }
    out.extend_from_slice(b"]}");
    HttpResponse::Ok()
        .content_type("application/json")
        .body(out)
}
