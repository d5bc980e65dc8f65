//! How the Azure simulator puts answers on the wire, shared by ARM, the metadata service and
//! Azure AD (and the router's log), so that none of those modules imports another: ARM and
//! OAuth error bodies, request bodies read under a size limit, the client's base URL, the
//! injected hang and the marker of an answer that is never delivered.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::json;

use super::Shared;

const HANG: Duration = Duration::from_secs(3600);

/// Never answers until the simulator shuts down (or an hour passes).
pub(super) async fn hang(shared: &Shared) {
    tokio::select! {
        _ = tokio::time::sleep(HANG) => {}
        _ = shared.stopping.cancelled() => {}
    }
}

/// Waits out a simulated latency. A zero wait is skipped, not slept: a zero sleep still parks
/// the answer until the worker's next timer turn, which under a burst comes after every other
/// request queued on that worker (the metadata services of all simulated nodes, ARM and Azure
/// AD share a few workers), while the real service answers as soon as it has the answer.
pub(super) async fn simulate_latency(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Base URL the client used (scheme and host of this request), for URLs we hand back.
pub(super) fn base_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

pub(super) fn arm_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json; charset=utf-8")
        .json(json!({ "error": { "code": code, "message": message } }))
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json; charset=utf-8")
        .json(json!({ "error": error, "error_description": description }))
}

pub(super) enum BodyError {
    TooLarge,
    Broken,
}

pub(super) async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Marks a response that is never delivered (logged with status 0).
pub(super) struct AnswerLost;
