//! The browser chat app and the JavaScript client library, embedded in the
//! binary (no CDN, nothing to deploy beside it; works offline on a LAN).
//!
//! Files are not fingerprinted, so every response says `Cache-Control:
//! no-cache` with an `ETag`: browsers revalidate each load and get a `304`
//! while the binary is unchanged, and never run an old `app.js` against a
//! new server. The page is locked down with a Content-Security-Policy that
//! allows only its own scripts, styles and WebSocket, as a second line of
//! defence behind the app's text-only rendering.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::App;

pub(super) struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The app page: gets the security headers.
    Page,
    /// Part of the app.
    AppFile,
    /// The client library: importable from any origin (CORS).
    Library,
}

/// FNV-1a, 64 bit: a content hash for the ETag, computed at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 hex digits + `"`, at compile time.
const fn etag(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($file:literal, $content_type:literal, $kind:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("../../../../web/", $file));
        const TAG: &[u8; 18] = &etag(BODY);
        Asset {
            body: BODY,
            content_type: $content_type,
            etag: match std::str::from_utf8(TAG) {
                Ok(tag) => tag,
                Err(_) => panic!("etag is ASCII"),
            },
            kind: $kind,
        }
    }};
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8", Kind::Page);
static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8", Kind::AppFile);
static I18N_JS: Asset = asset!("i18n.js", "text/javascript; charset=utf-8", Kind::AppFile);
static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8", Kind::AppFile);
static FAVICON: Asset = asset!("favicon.svg", "image/svg+xml", Kind::AppFile);
static CLIENT_JS: Asset = asset!("client.js", "text/javascript; charset=utf-8", Kind::Library);
// The operator dashboard (`admin.rs` serves these, only with `--api-key`).
pub(super) static ADMIN_HTML: Asset = asset!("admin.html", "text/html; charset=utf-8", Kind::Page);
pub(super) static ADMIN_JS: Asset =
    asset!("admin.js", "text/javascript; charset=utf-8", Kind::AppFile);
pub(super) static ADMIN_CSS: Asset = asset!("admin.css", "text/css; charset=utf-8", Kind::AppFile);
static CLIENT_DTS: Asset = asset!(
    "client.d.ts",
    "application/typescript; charset=utf-8",
    Kind::Library
);

/// Only this origin's scripts, styles, images and WebSocket; no inline
/// script, no plugins, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Every embedded file and its path.
static ASSETS: [(&str, &Asset); 8] = [
    ("/", &INDEX),
    ("/index.html", &INDEX),
    ("/app.js", &APP_JS),
    ("/i18n.js", &I18N_JS),
    ("/app.css", &APP_CSS),
    ("/favicon.svg", &FAVICON),
    ("/client.js", &CLIENT_JS),
    ("/client.d.ts", &CLIENT_DTS),
];

pub fn routes() -> Router<Arc<App>> {
    ASSETS.iter().fold(Router::new(), |router, &(path, asset)| {
        router.route(
            path,
            get(move |request: HeaderMap| async move { serve(asset, &request) }),
        )
    })
}

pub(super) fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == asset.etag || tag == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    match asset.kind {
        Kind::Page => {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        Kind::Library => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        Kind::AppFile => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_hex_and_differ_per_file() {
        for asset in [&INDEX, &APP_JS, &CLIENT_JS, &CLIENT_DTS, &ADMIN_HTML] {
            assert_eq!(asset.etag.len(), 18);
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
            assert!(asset.etag[1..17].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(INDEX.etag, APP_JS.etag);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 test vector");
    }

    #[test]
    fn revalidation_answers_304_without_a_body() {
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static(CLIENT_JS.etag),
        );
        let response = serve(&CLIENT_JS, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], CLIENT_JS.etag);

        let response = serve(&INDEX, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(response
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
