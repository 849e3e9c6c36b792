//! The operator dashboard: `GET /api/stats` (JSON, behind the API key like
//! the rest of `/api`) and the page at `/admin` that polls it and draws the
//! last five minutes.
//!
//! How the page authenticates: a browser cannot put `Authorization: Bearer`
//! on a plain navigation, so the page itself (and its script and style) is
//! served without the key. It holds no data: it asks for the key, keeps it
//! in the tab's `sessionStorage` (gone when the tab closes, never sent
//! anywhere but in the header of its own same-origin fetches) and sends it
//! with every `/api/stats` request, where the key is checked exactly as for
//! the rest of the API. A cookie was the alternative; it would have needed
//! a login endpoint, a session store and CSRF care, and would reach every
//! `/api` path from any page the browser loads. Everything under `/admin`
//! answers 404 when no `--api-key` is set, like `/api`. The key is never
//! logged (neither here nor by the page).
//!
//! No second set of numbers: the stats are [`Metrics::snapshot`], read
//! from the exposition `/metrics` renders, plus the busiest rooms from the
//! hub's registry.
//!
//! [`Metrics::snapshot`]: crate::metrics::Metrics::snapshot

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::web::{self, Asset};
use super::App;
use crate::metrics::Snapshot;

/// How many of the busiest rooms a snapshot lists.
const BUSIEST: usize = 10;

/// `GET /api/stats`. An object with a list of nodes, of which a single
/// server is the only one: the shape stays the same when a cluster lists
/// one entry per node.
#[derive(Serialize)]
struct Stats {
    nodes: Vec<Node>,
}

#[derive(Serialize)]
struct Node {
    /// Seconds since the server started, with millisecond precision: the
    /// clock for rates (differences between two polls), and a restart
    /// shows as this going back.
    uptime_seconds: f64,
    #[serde(flatten)]
    metrics: Snapshot,
    busiest_rooms: Vec<RoomStats>,
}

#[derive(Serialize)]
struct RoomStats {
    room: String,
    online: usize,
    /// The room's last committed seq: a reader's rate of messages.
    seq: u64,
}

/// Called behind `api::require_key`.
pub(super) async fn stats(State(app): State<Arc<App>>) -> Response {
    let node = Node {
        uptime_seconds: app.hub.clock_ms() as f64 / 1000.0,
        metrics: app.hub.metrics.snapshot(),
        busiest_rooms: app
            .hub
            .busiest_rooms(BUSIEST)
            .into_iter()
            .map(|(room, seq, online)| RoomStats {
                room: room.to_string(),
                online,
                seq,
            })
            .collect(),
    };
    let mut response = Json(Stats { nodes: vec![node] }).into_response();
    // Live numbers: no cache, proxy or browser, may answer for the server.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page and its files: `/admin`, `/admin/admin.js`, `/admin/admin.css`.
pub fn routes() -> Router<Arc<App>> {
    let files: [(&str, &'static Asset); 3] = [
        ("/admin", &web::ADMIN_HTML),
        ("/admin/admin.js", &web::ADMIN_JS),
        ("/admin/admin.css", &web::ADMIN_CSS),
    ];
    files
        .into_iter()
        .fold(Router::new(), |router, (path, asset)| {
            router.route(
                path,
                get(move |State(app): State<Arc<App>>, request: HeaderMap| {
                    page(app, asset, request)
                }),
            )
        })
}

/// One of the page's files, or 404 without `--api-key` (as for `/api`).
async fn page(app: Arc<App>, asset: &'static Asset, request: HeaderMap) -> Response {
    if app.config.api_key.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "the dashboard is disabled (no --api-key)\n",
        )
            .into_response();
    }
    web::serve(asset, &request)
}
