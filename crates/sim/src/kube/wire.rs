//! How the simulated API server puts things on the wire: query parameters, JSON responses,
//! Status errors and objects rendered under the version a client asked for. Shared by the router
//! (`http`), discovery, Tables and watches, so that none of them imports another.

use std::collections::HashMap;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use super::convert;
use super::meta::ApiError;
use super::resources::ResourceInfo;

/// Query parameters, last value wins.
pub type Query = HashMap<String, String>;

pub(crate) fn parse_query(q: &str) -> Query {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
}

/// A Status response for an error.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(code, &e.to_status());
    if e.code == 429 {
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
    }
    r
}

/// Writes the object, fixing `apiVersion` when it is served under another version than stored
/// and converting objects stored in another group's form.
pub fn write_object(out: &mut Vec<u8>, info: &ResourceInfo, obj: &Value) {
    if info.converted() {
        let _ = serde_json::to_writer(&mut *out, &convert::event_from_core(obj));
        return;
    }
    let av = info.api_version();
    if obj.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) {
        let _ = serde_json::to_writer(&mut *out, obj);
    } else {
        let mut o = obj.clone();
        o["apiVersion"] = json!(av);
        let _ = serde_json::to_writer(&mut *out, &o);
    }
}
