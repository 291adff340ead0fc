//! The HTTP API's request reader and response writer: sans-IO, so that every rule can be tested
//! on bytes and the server only moves them.
//!
//! Routes (the seed design's API):
//! * `PUT /keys/{key}`: a JSON body `{"value": "<utf-8>", "ttl_seconds": <int>}` (or
//!   `"ttl_ms"`), or raw bytes with `Content-Type: application/octet-stream` and `?ttl_seconds=`
//!   (or `?ttl_ms=`); `If-Match: <version>`
//!   makes it conditional.
//! * `GET /keys/{key}` (`Accept: application/octet-stream` for raw bytes) and
//!   `DELETE /keys/{key}`.
//! * `?w=` / `?r=` take `1..=255`, `quorum` or `all`; `?read_repair=` takes `true`, `false` or
//!   `blocking`.
//! * `GET /health`, `GET /cluster`, `GET /metrics`, and `GET /internal/local/{key}` (this node's
//!   own copy, for operators and tests).
//! * `POST /admin/compact`: a major compaction of every core's shard, answered when done.
//!
//! Keys are percent-decoded path segments of 1..=256 bytes. The head is parsed with `httparse`
//! under limits on its size and header count; a body's length is known from `Content-Length`
//! before any of it is read, so an oversized value is refused (413) without buffering it.

use std::fmt::Write as _;

pub use dynacore_proto::api::version_to_hex;
use dynacore_proto::{Quorum, ReadRepair, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// Limits on what a request may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the request line and headers.
    pub head_bytes_max: usize,
    /// Number of headers.
    pub headers_max: usize,
    /// Bytes of a body.
    pub body_bytes_max: usize,
}

impl Default for Limits {
    /// 16 KiB of head, 64 headers, and a body of a 10 MiB value plus 64 KiB (room for a JSON
    /// envelope). A JSON value whose escapes make its body longer than that is refused: send
    /// such values as raw bytes.
    fn default() -> Self {
        Limits {
            head_bytes_max: 16 << 10,
            headers_max: 64,
            body_bytes_max: VALUE_BYTES_MAX + (64 << 10),
        }
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `PUT /keys/{key}`.
    Put(Vec<u8>),
    /// `GET /keys/{key}`.
    Get(Vec<u8>),
    /// `DELETE /keys/{key}`.
    Delete(Vec<u8>),
    /// `GET /health`.
    Health,
    /// `GET /cluster`.
    Cluster,
    /// `GET /metrics`.
    Metrics,
    /// `GET /internal/local/{key}`: this node's own replica copy, without coordinating.
    LocalCopy(Vec<u8>),
    /// `POST /admin/compact`: flush and merge every core's tables into one (a major
    /// compaction), answered once done.
    AdminCompact,
    /// `POST /admin/snapshot[?name=]`: flush every core, then hard-link its tables and blob
    /// files under `<data_dir>/snapshots/<name>/` (as `nodetool snapshot`).
    AdminSnapshot,
    /// `POST /admin/repair`: a full anti-entropy repair of every range the node holds (as
    /// `nodetool repair`), answered once done.
    AdminRepair,
    /// `GET /admin/repair`: when each range the node holds was last fully repaired.
    RepairStatus,
    /// `POST /admin/verify-trees`: every core's hash tree compared with a full scan.
    VerifyTrees,
    /// `GET /cluster/endpoints/{key}`: the key's replicas, primary first (as `nodetool
    /// getendpoints`), and its pending ones while ranges move.
    Endpoints(Vec<u8>),
    /// `POST /admin/decommission`: this node streams its ranges to their next owners, leaves
    /// the ring and stops.
    Decommission,
    /// `POST /admin/removenode/{id}`: a dead node's ranges are rebuilt on their next owners
    /// from the surviving replicas, and it leaves the ring for good.
    RemoveNode(String),
    /// `POST /admin/cleanup`: this node drops the keys of ranges it no longer holds.
    Cleanup,
}

/// A request's head, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The route.
    pub route: Route,
    /// `?w=`.
    pub w: Quorum,
    /// `?r=`.
    pub r: Quorum,
    /// `?read_repair=`.
    pub read_repair: ReadRepair,
    /// `?ttl_seconds=` (raw-body puts).
    pub ttl_seconds: Option<u64>,
    /// `?ttl_ms=` (raw-body puts).
    pub ttl_ms: Option<u64>,
    /// `?name=` (snapshots).
    pub name: Option<String>,
    /// The body is raw bytes (`Content-Type: application/octet-stream`), not JSON.
    pub raw_body: bool,
    /// The client wants raw bytes back (`Accept: application/octet-stream`).
    pub accept_raw: bool,
    /// `If-Match` (a version in hex, or `*`: the key holds a live value).
    pub if_match: Option<String>,
    /// `If-None-Match` (`*` only: the key holds no live value).
    pub if_none_match: Option<String>,
    /// `X-Dynacore-Context`: the version a read returned, which a write builds on.
    pub context: Option<String>,
    /// `?conflicts=siblings` (`Some(true)`) or `lww` (`Some(false)`).
    pub siblings: Option<bool>,
    /// `Content-Length` (0 when absent).
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Why a request is refused: each maps to a status and a JSON error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400 `bad_request`.
    BadRequest(String),
    /// 400 `invalid_key`.
    InvalidKey(String),
    /// 404 `not_found` (unknown route).
    NotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 411 `length_required` (a body without `Content-Length`).
    LengthRequired,
    /// 413 `value_too_large`.
    PayloadTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// 431 `headers_too_large`.
    HeadersTooLarge,
}

impl HttpError {
    /// The status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) | HttpError::InvalidKey(_) => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge { .. } => 413,
            HttpError::HeadersTooLarge => 431,
        }
    }

    /// The JSON error code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "bad_request",
            HttpError::InvalidKey(_) => "invalid_key",
            HttpError::NotFound => "not_found",
            HttpError::MethodNotAllowed => "method_not_allowed",
            HttpError::LengthRequired => "length_required",
            HttpError::PayloadTooLarge { .. } => "value_too_large",
            HttpError::HeadersTooLarge => "headers_too_large",
        }
    }

    /// A message for people.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            HttpError::BadRequest(m) | HttpError::InvalidKey(m) => m.clone(),
            HttpError::NotFound => "no such route".to_owned(),
            HttpError::MethodNotAllowed => "method not allowed on this route".to_owned(),
            HttpError::LengthRequired => "a body needs Content-Length".to_owned(),
            HttpError::PayloadTooLarge { len, max } => {
                format!("body of {len} bytes is over the {max}-byte limit")
            }
            HttpError::HeadersTooLarge => "request head too large".to_owned(),
        }
    }

    /// The error as a complete response (JSON body), which closes the connection.
    #[must_use]
    pub fn to_response(&self) -> Vec<u8> {
        let body = error_body(self.code(), &self.message());
        response(
            self.status(),
            "application/json",
            &[],
            body.as_bytes(),
            false,
        )
    }
}

/// `{"error": code, "message": message}`.
#[must_use]
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

/// Parses a request head from the front of `buf`: the head and its length in bytes, or `None`
/// while it is incomplete.
///
/// # Errors
/// [`HttpError`] for anything the API refuses; the caller answers with
/// [`HttpError::to_response`] and closes the connection.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.head_bytes_max {
                Err(HttpError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::BadRequest(format!("malformed request: {e}"))),
    };
    if used > limits.head_bytes_max {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = RequestHead {
        route: route(method, path)?,
        w: Quorum::Default,
        r: Quorum::Default,
        read_repair: ReadRepair::Default,
        ttl_seconds: None,
        ttl_ms: None,
        name: None,
        raw_body: false,
        accept_raw: false,
        if_match: None,
        if_none_match: None,
        context: None,
        siblings: None,
        content_length: 0,
        // HTTP/1.1 keeps connections open unless asked otherwise; 1.0 closes them.
        keep_alive: req.version == Some(1),
    };
    parse_query(query, &mut head)?;
    let mut length_given = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::BadRequest(format!("header {} is not UTF-8", h.name)))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Digits only (no sign), and one value: conflicting lengths are how requests get
            // smuggled past a proxy.
            let len = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| HttpError::BadRequest("bad Content-Length".to_owned()))?;
            if length_given && len != head.content_length {
                return Err(HttpError::BadRequest(
                    "conflicting Content-Length headers".to_owned(),
                ));
            }
            head.content_length = len;
            length_given = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.raw_body = media_type(value) == "application/octet-stream";
        } else if name.eq_ignore_ascii_case("accept") {
            head.accept_raw = value
                .split(',')
                .any(|t| media_type(t) == "application/octet-stream");
        } else if name.eq_ignore_ascii_case("if-match") {
            head.if_match = Some(value.trim_matches('"').to_owned());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            head.if_none_match = Some(value.trim_matches('"').to_owned());
        } else if name.eq_ignore_ascii_case("x-dynacore-context") {
            head.context = Some(value.trim_matches('"').to_owned());
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        }
    }
    // A raw body is the value itself; a JSON body may add an envelope around it.
    let body_max = if head.raw_body {
        limits.body_bytes_max.min(VALUE_BYTES_MAX)
    } else {
        limits.body_bytes_max
    };
    if head.content_length > body_max {
        return Err(HttpError::PayloadTooLarge {
            len: head.content_length,
            max: body_max,
        });
    }
    if matches!(head.route, Route::Put(_)) && !length_given {
        return Err(HttpError::LengthRequired);
    }
    Ok(Some((head, used)))
}

/// The media type of a `Content-Type` or `Accept` entry, lower-cased, parameters dropped.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The key of a `…/{key}` path segment: percent-decoded, 1..=256 bytes.
fn key_segment(raw: &str) -> Result<Vec<u8>, HttpError> {
    if raw.contains('/') {
        return Err(HttpError::NotFound);
    }
    let key = percent_decode(raw)?;
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(HttpError::InvalidKey(format!(
            "a key holds 1 to {KEY_BYTES_MAX} bytes, not {}",
            key.len()
        )));
    }
    Ok(key)
}

fn route(method: &str, path: &str) -> Result<Route, HttpError> {
    if let Some(raw) = path.strip_prefix("/internal/local/") {
        let key = key_segment(raw)?;
        return match method {
            "GET" => Ok(Route::LocalCopy(key)),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if let Some(raw) = path.strip_prefix("/cluster/endpoints/") {
        let key = key_segment(raw)?;
        return match method {
            "GET" => Ok(Route::Endpoints(key)),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if let Some(id) = path.strip_prefix("/admin/removenode/") {
        return match method {
            "POST" => Ok(Route::RemoveNode(id.to_owned())),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if path == "/admin/decommission" || path == "/admin/cleanup" {
        return match method {
            "POST" if path == "/admin/cleanup" => Ok(Route::Cleanup),
            "POST" => Ok(Route::Decommission),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if let Some(raw) = path.strip_prefix("/keys/") {
        let key = key_segment(raw)?;
        return match method {
            "PUT" => Ok(Route::Put(key)),
            "GET" => Ok(Route::Get(key)),
            "DELETE" => Ok(Route::Delete(key)),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if path == "/keys" || path == "/keys/" {
        return Err(HttpError::InvalidKey(format!(
            "a key holds 1 to {KEY_BYTES_MAX} bytes, not 0"
        )));
    }
    if path == "/admin/verify-trees" {
        return match method {
            "POST" => Ok(Route::VerifyTrees),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if path == "/admin/repair" {
        return match method {
            "POST" => Ok(Route::AdminRepair),
            "GET" => Ok(Route::RepairStatus),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if path == "/admin/compact" {
        return match method {
            "POST" => Ok(Route::AdminCompact),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    if path == "/admin/snapshot" {
        return match method {
            "POST" => Ok(Route::AdminSnapshot),
            _ => Err(HttpError::MethodNotAllowed),
        };
    }
    let fixed = match path {
        "/health" => Route::Health,
        "/cluster" => Route::Cluster,
        "/metrics" => Route::Metrics,
        _ => return Err(HttpError::NotFound),
    };
    if method == "GET" {
        Ok(fixed)
    } else {
        Err(HttpError::MethodNotAllowed)
    }
}

/// Decodes `%XX` escapes of a path segment (a `+` stays a `+`).
///
/// # Errors
/// [`HttpError::InvalidKey`] for a `%` not followed by two hex digits.
pub fn percent_decode(segment: &str) -> Result<Vec<u8>, HttpError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| HttpError::InvalidKey("bad percent escape in the key".to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_quorum(name: &str, value: &str) -> Result<Quorum, HttpError> {
    match value {
        "quorum" => Ok(Quorum::Quorum),
        "all" => Ok(Quorum::All),
        n => match n.parse::<u8>() {
            Ok(c) if c > 0 => Ok(Quorum::Count(c)),
            _ => Err(HttpError::BadRequest(format!(
                "{name} must be 1..=255, quorum or all, not {value:?}"
            ))),
        },
    }
}

fn parse_query(query: &str, head: &mut RequestHead) -> Result<(), HttpError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = String::from_utf8(percent_decode(raw)?)
            .map_err(|_| HttpError::BadRequest(format!("{name} is not UTF-8")))?;
        match name {
            "w" => head.w = parse_quorum("w", &value)?,
            "r" => head.r = parse_quorum("r", &value)?,
            "read_repair" => {
                head.read_repair = match value.as_str() {
                    "true" => ReadRepair::Background,
                    "false" => ReadRepair::Off,
                    "blocking" => ReadRepair::Blocking,
                    _ => {
                        return Err(HttpError::BadRequest(format!(
                            "read_repair must be true, false or blocking, not {value:?}"
                        )))
                    }
                }
            }
            "conflicts" => {
                head.siblings = Some(match value.as_str() {
                    "siblings" => true,
                    "lww" => false,
                    _ => {
                        return Err(HttpError::BadRequest(format!(
                            "conflicts must be lww or siblings, not {value:?}"
                        )))
                    }
                });
            }
            "name" => head.name = Some(value.clone()),
            "ttl_seconds" | "ttl_ms" => {
                let n = Some(value.parse().map_err(|_| {
                    HttpError::BadRequest(format!("{name} must be a whole number, not {value:?}"))
                })?);
                if name == "ttl_ms" {
                    head.ttl_ms = n;
                } else {
                    head.ttl_seconds = n;
                }
            }
            _ => {
                return Err(HttpError::BadRequest(format!(
                    "unknown query parameter {name:?}"
                )))
            }
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// A TTL in milliseconds from one given in seconds or in milliseconds (not both).
///
/// # Errors
/// [`HttpError::BadRequest`] when both are given.
pub fn ttl_ms(seconds: Option<u64>, ms: Option<u64>) -> Result<Option<u64>, HttpError> {
    match (seconds, ms) {
        (Some(_), Some(_)) => Err(HttpError::BadRequest(
            "give ttl_seconds or ttl_ms, not both".into(),
        )),
        (Some(s), None) => Ok(Some(s.saturating_mul(1000))),
        (None, ms) => Ok(ms),
    }
}

/// The value and TTL (in milliseconds) of a JSON put body.
///
/// # Errors
/// [`HttpError::BadRequest`] for anything but `{"value": "<string>", "ttl_seconds": <int>}` (or
/// `"ttl_ms"` instead of `"ttl_seconds"`).
pub fn parse_json_put(body: &[u8]) -> Result<(Vec<u8>, Option<u64>), HttpError> {
    let put: PutBody = serde_json::from_slice(body)
        .map_err(|e| HttpError::BadRequest(format!("bad JSON body: {e}")))?;
    if put.value.len() > VALUE_BYTES_MAX {
        return Err(HttpError::PayloadTooLarge {
            len: put.value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    let ttl = ttl_ms(put.ttl_seconds, put.ttl_ms)?;
    Ok((put.value.into_bytes(), ttl))
}

/// The bytes of a version given as hex (`If-Match`, `X-Dynacore-Context`).
///
/// # Errors
/// [`HttpError::BadRequest`] for anything but an even number of hex digits.
pub fn version_from_hex(hex: &str) -> Result<Vec<u8>, HttpError> {
    dynacore_proto::api::version_from_hex(hex).map_err(|e| HttpError::BadRequest(e.to_string()))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        300 => "Multiple Choices",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// A complete response.
#[must_use]
pub fn response(
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str) -> Result<RequestHead, HttpError> {
        parse_head(raw.as_bytes(), &Limits::default()).map(|h| h.expect("complete").0)
    }

    #[test]
    fn routes_keys_and_queries() {
        let h = parse("PUT /keys/user%3A1?w=quorum&ttl_seconds=30 HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/octet-stream\r\n\r\n").expect("ok");
        assert_eq!(h.route, Route::Put(b"user:1".to_vec()));
        assert_eq!(h.w, Quorum::Quorum);
        assert_eq!(h.ttl_seconds, Some(30));
        assert!(h.raw_body && h.keep_alive);
        assert_eq!(h.content_length, 5);
        let h = parse("GET /keys/a+b?r=2&read_repair=blocking HTTP/1.1\r\nAccept: text/plain, application/octet-stream\r\nConnection: close\r\n\r\n").expect("ok");
        assert_eq!(h.route, Route::Get(b"a+b".to_vec()));
        assert_eq!(
            (h.r, h.read_repair),
            (Quorum::Count(2), ReadRepair::Blocking)
        );
        assert!(h.accept_raw && !h.keep_alive);
        let h = parse("DELETE /keys/k?w=all HTTP/1.1\r\nIf-Match: \"v1\"\r\n\r\n").expect("ok");
        assert_eq!((h.route, h.w), (Route::Delete(b"k".to_vec()), Quorum::All));
        assert_eq!(h.if_match.as_deref(), Some("v1"));
        for (path, route) in [
            ("/health", Route::Health),
            ("/cluster", Route::Cluster),
            ("/metrics", Route::Metrics),
        ] {
            assert_eq!(
                parse(&format!("GET {path} HTTP/1.1\r\n\r\n"))
                    .expect("ok")
                    .route,
                route
            );
        }
    }

    #[test]
    fn refusals_carry_the_api_status_codes() {
        let status = |raw: &str| parse(raw).map(|_| 200).unwrap_or_else(|e| e.status());
        let long = "k".repeat(257);
        assert_eq!(status(&format!("GET /keys/{long} HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(status("GET /keys/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET /keys/%zz HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET /keys/a/b HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(
            status("POST /keys/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            405
        );
        assert_eq!(status("POST /health HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("PUT /keys/a HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(
            status("PUT /keys/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status("PUT /keys/a?w=0 HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT /keys/a?w=many HTTP/1.1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET /keys/a?read_repair=maybe HTTP/1.1\r\n\r\n"),
            400
        );
        assert_eq!(status("GET /keys/a?colour=red HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status("GET /keys/a HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT /keys/a HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT /keys/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT /keys/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            200
        );
        // 10 MiB + 64 KiB + 1: refused from the header, before any body byte is read.
        let big = VALUE_BYTES_MAX + (64 << 10) + 1;
        assert_eq!(
            status(&format!(
                "PUT /keys/a HTTP/1.1\r\nContent-Length: {big}\r\n\r\n"
            )),
            413
        );
        // A raw value one byte over 10 MiB: refused too (no envelope to allow for).
        let raw = VALUE_BYTES_MAX + 1;
        assert_eq!(
            status(&format!(
                "PUT /keys/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {raw}\r\n\r\n"
            )),
            413
        );
        assert_eq!(
            status(&format!(
                "PUT /keys/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {VALUE_BYTES_MAX}\r\n\r\n"
            )),
            200
        );
        assert_eq!(status("GARBAGE\r\n\r\n"), 400);
        let e = HttpError::NotFound.to_response();
        let text = String::from_utf8(e).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.ends_with(r#"{"error":"not_found","message":"no such route"}"#),
            "{text}"
        );
    }

    #[test]
    fn heads_come_in_pieces_and_are_bounded() {
        let raw = b"GET /keys/k HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(
                parse_head(&raw[..cut], &Limits::default()),
                Ok(None),
                "cut {cut}"
            );
        }
        let (_, used) = parse_head(raw, &Limits::default())
            .expect("ok")
            .expect("whole");
        assert_eq!(used, raw.len());
        let tight = Limits {
            head_bytes_max: 20,
            ..Limits::default()
        };
        assert_eq!(
            parse_head(&raw[..25], &tight),
            Err(HttpError::HeadersTooLarge)
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_head(
                format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes(),
                &Limits::default()
            ),
            Err(HttpError::HeadersTooLarge)
        );
    }

    #[test]
    fn json_put_bodies() {
        assert_eq!(
            parse_json_put(br#"{"value": "h\u00e9llo", "ttl_seconds": 5}"#),
            Ok(("héllo".as_bytes().to_vec(), Some(5_000)))
        );
        assert_eq!(
            parse_json_put(br#"{"value": "v", "ttl_ms": 1500}"#),
            Ok((b"v".to_vec(), Some(1_500)))
        );
        assert_eq!(parse_json_put(br#"{"value": ""}"#), Ok((Vec::new(), None)));
        for bad in [
            &br#"{"value": 5}"#[..],
            br#"{"val": "x"}"#,
            br#"{"value": "x", "extra": 1}"#,
            b"not json",
            br#"{"value": "x", "ttl_seconds": -1}"#,
            br#"{"value": "x", "ttl_seconds": 1, "ttl_ms": 1000}"#,
        ] {
            assert!(
                matches!(parse_json_put(bad), Err(HttpError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    proptest! {
        /// Arbitrary bytes never panic the reader or the JSON body parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_head(&bytes, &Limits::default());
            let _ = parse_json_put(&bytes);
        }

        /// Any key bytes, percent-encoded into the path, come back as the same key.
        #[test]
        fn percent_encoded_keys_round_trip(key in prop::collection::vec(any::<u8>(), 1..=256)) {
            let path: String = key.iter().map(|b| format!("%{b:02X}")).collect();
            let h = parse(&format!("GET /keys/{path} HTTP/1.1\r\n\r\n")).expect("ok");
            prop_assert_eq!(h.route, Route::Get(key));
        }
    }
}
