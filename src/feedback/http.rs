//! The HTTP listener on `feedback.http_listen`: one-click unsubscribe (RFC 8058) and its
//! confirmation page at `/u/<token>`, the providers' webhooks under `/webhooks/`, and
//! `/healthz` and `/metrics` for operations.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use super::desk::Desk;
use super::events;
use super::page::{self, Page};
use super::refusal::Refusal;
use super::{postmark, sendgrid, ses};
use crate::suppression::{About, Reason, Report, Source};
use crate::token::Token;

/// The largest request body read: a one-click POST is a few bytes, a provider batches events.
const MAX_BODY: usize = 1024 * 1024;

/// The Prometheus exposition format version the text follows.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the routes read.
pub struct Site {
    /// Where reports go.
    pub desk: Arc<Desk>,
    /// Whether `/u/<token>` answers: only with `feedback.secret_file` set.
    pub tokens: bool,
    /// The process's metrics.
    pub metrics: PrometheusHandle,
    /// `/webhooks/ses`, when configured.
    pub ses: Option<ses::Verifier>,
    /// `/webhooks/sendgrid`, when configured.
    pub sendgrid: Option<sendgrid::Verifier>,
    /// `/webhooks/postmark`, when configured.
    pub postmark: Option<postmark::Credentials>,
}

/// Every route.
pub fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/u/{token}", get(confirm).post(unsubscribe))
        .route("/webhooks/ses", post(from_ses))
        .route("/webhooks/sendgrid", post(from_sendgrid))
        .route("/webhooks/postmark", post(from_postmark))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(site)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(site): State<Arc<Site>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_TYPE)],
        site.metrics.render(),
    )
}

/// The recipient's locale for a token, or the answer when there is none to show a page for.
async fn locale_of(site: &Site, raw: &str) -> Result<(Token, String), Response> {
    if !site.tokens {
        events::refused("http", "tokens-off");
        return Err(page_response(StatusCode::NOT_FOUND, Page::Unknown, None));
    }
    let Ok(token) = Token::parse(raw) else {
        events::refused("http", "malformed-token");
        return Err(page_response(StatusCode::BAD_REQUEST, Page::Unknown, None));
    };
    match site.desk.recipient_of(&token).await {
        Ok(Some(recipient)) => Ok((token, recipient.locale)),
        Ok(None) => {
            events::refused("http", "unknown-token");
            Err(page_response(StatusCode::NOT_FOUND, Page::Unknown, None))
        }
        Err(error) => {
            tracing::error!(%error, "could not look a token up");
            Err(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }
    }
}

fn page_response(status: StatusCode, page: Page, locale: Option<&str>) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page::render(page, locale)),
    )
        .into_response()
}

/// `GET /u/<token>`: the confirmation page; records nothing.
async fn confirm(State(site): State<Arc<Site>>, Path(raw): Path<String>) -> Response {
    match locale_of(&site, &raw).await {
        Ok((_, locale)) => page_response(StatusCode::OK, Page::Confirm, Some(&locale)),
        Err(response) => response,
    }
}

/// `POST /u/<token>`: RFC 8058 one-click (body `List-Unsubscribe=One-Click`), or the
/// confirmation page's button; answering twice records the same unsubscribe.
async fn unsubscribe(State(site): State<Arc<Site>>, Path(raw): Path<String>) -> Response {
    let (token, locale) = match locale_of(&site, &raw).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let report = Report {
        reason: Reason::Unsubscribe,
        about: About::Token(token),
        source: Source::Unsubscribe,
        detail: "one-click".into(),
    };
    match site.desk.record(&report).await {
        Ok(_) => page_response(StatusCode::OK, Page::Done, Some(&locale)),
        Err(error) => {
            tracing::error!(%error, "could not record an unsubscribe");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn from_ses(State(site): State<Arc<Site>>, body: Bytes) -> Response {
    let Some(verifier) = &site.ses else {
        return not_configured();
    };
    record_all(&site, "ses", verifier.reports(&body)).await
}

async fn from_sendgrid(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = &site.sendgrid else {
        return not_configured();
    };
    record_all(&site, "sendgrid", verifier.reports(&headers, &body)).await
}

async fn from_postmark(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(credentials) = &site.postmark else {
        return not_configured();
    };
    record_all(&site, "postmark", credentials.reports(&headers, &body)).await
}

fn not_configured() -> Response {
    events::refused("http", "webhook-not-configured");
    StatusCode::NOT_FOUND.into_response()
}

/// Records a webhook's reports: `200` once all are recorded, `503` when the ledger could not
/// take them (the provider retries), the refusal's status otherwise.
async fn record_all(
    site: &Site,
    route: &'static str,
    reports: Result<Vec<Report>, Refusal>,
) -> Response {
    let reports = match reports {
        Ok(reports) => reports,
        Err(refusal) => {
            tracing::warn!(route, why = refusal.why, "webhook refused");
            events::refused("http", refusal.why);
            return refusal.status.into_response();
        }
    };
    for report in &reports {
        if let Err(error) = site.desk.record(report).await {
            tracing::error!(%error, route, "could not record a webhook's report");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    StatusCode::OK.into_response()
}
