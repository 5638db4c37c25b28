//! `sunset preview --serve`: a loopback web server showing every locale of a template side by
//! side, re-rendered when a file under `templates.dir` changes (notify → server-sent events).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cli::PreviewArgs;
use crate::config::Config;
use crate::lint;
use crate::render::{self, Sample, TemplateError, TemplateName};

use super::grid;
use super::guard::{self, Guard};
use super::page::{self, Listing};

/// Only same-origin scripts, styles and requests; the email iframes are sandboxed without
/// scripts, and nothing is fetched from elsewhere (the page works offline).
const SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'";

/// What every request handler reads.
#[derive(Debug)]
struct Site {
    /// `templates.dir`.
    dir: PathBuf,
    /// `templates.default_locale`, for the checks.
    default_locale: String,
    /// A message per change under `dir`.
    changes: broadcast::Sender<()>,
    /// Ends the event streams, so the server can finish.
    shutdown: CancellationToken,
}

/// Serves until `shutdown` is cancelled. Prints the address to open on stdout.
pub async fn run(
    config: &Config,
    args: &PreviewArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dir = config.templates.dir.clone();
    let start_page = match args.template.as_deref() {
        Some(name) => {
            let name = TemplateName::parse(name)?;
            render::template_dir(&dir, &name)?;
            format!("/t/{name}")
        }
        None => "/".to_string(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("Failed to read the listening address")?;
    if !address.ip().is_loopback() {
        warn!(%address, "listening beyond loopback: anyone who can reach this address sees the templates");
    }
    let (changes, _) = broadcast::channel(16);
    // Kept alive for as long as the server runs; dropping it stops the watching.
    let _watcher = watch(&dir, changes.clone());
    let site = Arc::new(Site {
        dir,
        default_locale: config.templates.default_locale.clone(),
        changes,
        shutdown: shutdown.clone(),
    });
    crate::say!("sunset preview: http://{address}{start_page} (Ctrl-C to stop)")?;
    axum::serve(listener, router(site, Guard::new(address)))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("The preview server failed")
}

fn router(site: Arc<Site>, guard: Guard) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/t/{template}", get(grid_page))
        .route("/t/{template}/grid", axum::routing::post(grid_fragment))
        .route("/t/{template}/sample", get(sample_file))
        .route("/events", get(events))
        .route("/assets/page.js", get(script))
        .route("/assets/page.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::check,
        ))
        .layer(axum::middleware::map_response(secure))
        .with_state(site)
}

/// Watches `dir` recursively; a warning, not a failure, when the system refuses (live reload
/// is then off, the pages still work).
fn watch(dir: &Path, changes: broadcast::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading a template must not count as a change (access times, opens).
        if event.is_ok_and(|e| {
            matches!(
                e.kind,
                EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_)
            ) && !matches!(e.kind, EventKind::Modify(ModifyKind::Metadata(_)))
        }) {
            let _ = changes.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "cannot watch the templates: live reload is off");
            None
        }
    }
}

async fn index(State(site): State<Arc<Site>>) -> Response {
    let shown = site.dir.display().to_string();
    blocking(move || {
        let listings = listings(&site.dir, &site.default_locale)
            .map_err(|e| format!("cannot read the templates folder: {e}"));
        Ok(Html(page::index(&shown, listings)).into_response())
    })
    .await
}

/// Every template folder with its check.
fn listings(dir: &Path, default_locale: &str) -> std::io::Result<Vec<Listing>> {
    Ok(render::template_folders(dir)?
        .into_iter()
        .map(|name| {
            let problems = match TemplateName::parse(&name) {
                Ok(template) => lint::check(dir, &template, default_locale),
                Err(e) => vec![lint::Problem {
                    at: name.clone(),
                    message: e.to_string(),
                }],
            };
            Listing {
                locales: render::locale_folders(&dir.join(&name)).unwrap_or_default(),
                name,
                problems,
            }
        })
        .collect())
}

async fn grid_page(State(site): State<Arc<Site>>, UrlPath(template): UrlPath<String>) -> Response {
    blocking(move || {
        let name = TemplateName::parse(&template).map_err(|e| refused(e.into()))?;
        let root = render::template_dir(&site.dir, &name).map_err(refused)?;
        let path = root.join(render::SAMPLE_FILE);
        // Read once: the box shows the text even when it does not parse.
        let (sample_json, sample) = match render::read_source(&path) {
            Ok(text) => {
                let sample = Sample::parse(&path, &text);
                (text, sample)
            }
            Err(e) => (String::new(), Err(e)),
        };
        let grid = match sample {
            Ok(sample) => rendered_grid(&site, &name, &sample)?,
            Err(e) => format!(
                "<p class=\"error\" role=\"alert\">{}</p>",
                page::escape(&e.to_string())
            ),
        };
        Ok(Html(page::grid_page(&name, &sample_json, &grid)).into_response())
    })
    .await
}

/// The template's `sample.json` as it is on disk now, for a page whose sample box was not edited.
async fn sample_file(
    State(site): State<Arc<Site>>,
    UrlPath(template): UrlPath<String>,
) -> Response {
    blocking(move || {
        let name = TemplateName::parse(&template).map_err(|e| refused(e.into()))?;
        let path = render::template_dir(&site.dir, &name)
            .map_err(refused)?
            .join(render::SAMPLE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            (
                StatusCode::NOT_FOUND,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
    })
    .await
}

/// The grid for the sample JSON posted by the page; a sample that does not parse is a 400
/// whose text the page shows.
async fn grid_fragment(
    State(site): State<Arc<Site>>,
    UrlPath(template): UrlPath<String>,
    sample_json: String,
) -> Response {
    blocking(move || {
        let name = TemplateName::parse(&template).map_err(|e| refused(e.into()))?;
        let sample: Sample = serde_json::from_str(&sample_json).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("The sample does not fit sample.json's shape: {e}"),
            )
        })?;
        Ok(Html(rendered_grid(&site, &name, &sample)?).into_response())
    })
    .await
}

/// A request that cannot be answered with a page: the status and the message shown.
type Refusal = (StatusCode, String);

fn rendered_grid(site: &Site, name: &TemplateName, sample: &Sample) -> Result<String, Refusal> {
    grid::build(&site.dir, name, &site.default_locale, sample)
        .map(|grid| page::grid(&grid))
        .map_err(refused)
}

/// A name that is not a folder name is a 400, an unknown template a 404, anything else a 500;
/// the message says which.
fn refused(error: TemplateError) -> Refusal {
    let status = match error {
        TemplateError::BadName(_) => StatusCode::BAD_REQUEST,
        TemplateError::Unknown { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, error.to_string())
}

/// Runs file reading and rendering off the async threads.
async fn blocking<F>(work: F) -> Response
where
    F: FnOnce() -> Result<Response, Refusal> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}"),
        )
            .into_response(),
    }
}

/// One `change` event per change under the templates folder, until shutdown.
async fn events(
    State(site): State<Arc<Site>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = site.changes.subscribe();
    let stream = futures::stream::unfold(
        (changes, site.shutdown.clone()),
        |(mut changes, shutdown)| async move {
            let next = tokio::select! {
                () = shutdown.cancelled() => return None,
                next = changes.recv() => next,
            };
            match next {
                // Missed changes are one change: the page re-renders everything anyway.
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some((
                    Ok(Event::default().event("change").data("templates")),
                    (changes, shutdown),
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        page::SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        page::STYLE,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// Security headers on every response; nothing is cached, so an edit always shows.
async fn secure(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
