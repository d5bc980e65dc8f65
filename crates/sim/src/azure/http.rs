//! The simulator's HTTP router: one actix-web server, many loopback listeners. The listener a
//! request arrived on decides what it is talking to: the management listener serves ARM
//! ([`super::arm_http`]) and Azure AD ([`super::aad_http`]), each node listener serves that
//! node's metadata service ([`super::imds_http`]). Every answer is logged here, as it arrived.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use super::Shared;
use super::aad_http::{aad, openid_configuration};
use super::arm_http::arm;
use super::imds_http::imds;
use super::state::RequestRecord;
use super::wire::{AnswerLost, arm_error};

const LOG_CAP: usize = 200_000;

pub(crate) fn serve(
    shared: Arc<Shared>,
    mgmt: TcpListener,
    mgmt_tls: Option<(TcpListener, rustls::ServerConfig)>,
    nodes: Vec<TcpListener>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(shared);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(dispatch))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(mgmt)?;
    if let Some((l, config)) = mgmt_tls {
        server = server.listen_rustls_0_23(l, config)?;
    }
    for l in nodes {
        server = server.listen(l)?;
    }
    Ok(server.run())
}

async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let received = Instant::now();
    let local = req.app_config().local_addr();
    if let Some((node, key)) = shared.nodes_by_addr.get(&local) {
        let resp = imds(&req, &shared, node, key).await;
        record(&shared, &req, received, None, Some(node), &resp);
        return resp;
    }
    let path = req.path().trim_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').collect();
    let ci = |i: usize, w: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
    let is_token_path = (segs.len() == 3 && ci(1, "oauth2") && ci(2, "token"))
        || (segs.len() == 4 && ci(1, "oauth2") && ci(2, "v2.0") && ci(3, "token"));
    let is_openid = segs.len() >= 3
        && segs[segs.len() - 2].eq_ignore_ascii_case(".well-known")
        && segs[segs.len() - 1].eq_ignore_ascii_case("openid-configuration");
    if is_openid {
        return openid_configuration(&req, segs[0], ci(1, "v2.0"));
    }
    if is_token_path {
        let resp = aad(&req, payload, &shared, segs[0], segs.len() == 4).await;
        record(&shared, &req, received, None, None, &resp);
        return resp;
    }
    if ci(0, "subscriptions") && segs.len() >= 2 {
        let sub = segs[1].to_string();
        let resp = arm(&req, payload, &shared, &segs).await;
        record(&shared, &req, received, Some(sub), None, &resp);
        return resp;
    }
    arm_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("No route for '{}'.", req.path()),
    )
}

/// Logs a request as it arrived: the raw path and query of the request line (so tests can see
/// exactly what a client, or a proxy such as NMI, sent).
fn record(
    shared: &Shared,
    req: &HttpRequest,
    received: Instant,
    subscription: Option<String>,
    node: Option<&str>,
    resp: &HttpResponse,
) {
    let mut inner = shared.lock();
    if inner.log.len() < LOG_CAP {
        inner.log.push(RequestRecord {
            at: Instant::now(),
            received,
            peer: req.peer_addr(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            subscription,
            node: node.map(str::to_string),
            status: if resp.extensions().contains::<AnswerLost>() {
                0
            } else {
                resp.status().as_u16()
            },
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        });
    }
}
