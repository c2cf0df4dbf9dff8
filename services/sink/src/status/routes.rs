//! Routing, query parameters and responses of the status server (see [`super`]).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::{html, REQUEST_TIMEOUT};
use crate::store::status::{BucketWidth, IncidentQuery, PageRequest, MAX_PER_PAGE};
use crate::store::{ErrorClass, Store, StoreError};

/// `limit` of `/api/v1/incidents` when none is given.
pub const DEFAULT_INCIDENT_LIMIT: u32 = 100;
/// The largest `limit` of `/api/v1/incidents`.
pub const MAX_INCIDENT_LIMIT: u32 = 1000;
/// The smallest `refresh` of a page other than 0 (never reload), seconds.
pub const MIN_REFRESH_SECONDS: u32 = 2;
/// The largest `refresh` of a page, seconds.
pub const MAX_REFRESH_SECONDS: u32 = 86_400;

/// The Content-Security-Policy of the pages: no script, no external resource; the inline
/// `<style>` only. A target name that slipped through escaping could still run nothing.
const PAGE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`
    Overview,
    /// `/targets/{name}` (decoded).
    TargetPage(String),
    /// `/api/v1/targets`
    ApiTargets,
    /// `/api/v1/targets/{name}` (decoded).
    ApiTarget(String),
    /// `/api/v1/incidents`
    ApiIncidents,
    /// `/api/v1/openapi.yaml`
    OpenApi,
}

impl Route {
    /// The route label of metrics and logs (`overview`, `target_page`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Overview => "overview",
            Self::TargetPage(_) => "target_page",
            Self::ApiTargets => "api_targets",
            Self::ApiTarget(_) => "api_target",
            Self::ApiIncidents => "api_incidents",
            Self::OpenApi => "openapi",
        }
    }
}

/// Why a request is not answered with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 400: a bad parameter or path; the text names it.
    BadRequest(String),
    /// 404: no such route or target.
    NotFound(String),
    /// 405: not GET or HEAD.
    MethodNotAllowed,
    /// 503: the database is unreachable or too slow.
    Unavailable(String),
    /// 500: a statement failed for another reason (logged with its detail).
    Internal,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to the client.
    pub fn message(&self) -> String {
        match self {
            Self::BadRequest(m) | Self::NotFound(m) => m.clone(),
            Self::MethodNotAllowed => "only GET and HEAD are allowed".to_string(),
            Self::Unavailable(m) => format!("the database is unavailable ({m}); try again shortly"),
            Self::Internal => "internal error reading the database (logged by the sink)".to_string(),
        }
    }

    fn from_store(route: &Route, e: &StoreError) -> Self {
        // Before the sink's migrations ran (a fresh database), the tables are missing: not
        // ready yet rather than broken.
        if e.is(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            tracing::warn!(route = route.label(), error = %e, "Status page: the schema is not migrated yet.");
            return Self::Unavailable("the schema is not migrated yet".to_string());
        }
        if e.class == ErrorClass::Transient {
            tracing::warn!(route = route.label(), error = %e, "Status page: database unavailable.");
            Self::Unavailable(short_reason(e))
        } else {
            tracing::error!(route = route.label(), error = %e, code = %e.code, "Status page: a read failed.");
            Self::Internal
        }
    }
}

/// What the client may see of a transient store error: its kind, not its text (which may
/// name hosts and users).
fn short_reason(e: &StoreError) -> String {
    if e.connection_lost() {
        "no connection".to_string()
    } else {
        format!("error {}", e.code)
    }
}

/// Maps a path to its route; `None` for an unknown path.
///
/// # Errors
/// A target name that is not UTF-8 once percent-decoded, or empty.
pub fn route(path: &str) -> Result<Option<Route>, Failure> {
    let name = |raw: &str| -> Result<String, Failure> {
        let name = percent_decode_str(raw).decode_utf8().map_err(|_| {
            Failure::BadRequest("the target name in the path is not valid UTF-8 once percent-decoded".to_string())
        })?;
        if name.is_empty() {
            return Err(Failure::NotFound("the path names no target".to_string()));
        }
        // PostgreSQL text cannot hold NUL: no target has such a name (the sink refuses it).
        if name.contains('\0') {
            return Err(Failure::NotFound(
                "no target has a NUL character in its name".to_string(),
            ));
        }
        Ok(name.into_owned())
    };
    Ok(Some(match path {
        "/" => Route::Overview,
        "/api/v1/targets" => Route::ApiTargets,
        "/api/v1/incidents" => Route::ApiIncidents,
        "/api/v1/openapi.yaml" => Route::OpenApi,
        p => {
            if let Some(raw) = p.strip_prefix("/api/v1/targets/") {
                Route::ApiTarget(name(raw)?)
            } else if let Some(raw) = p.strip_prefix("/targets/") {
                Route::TargetPage(name(raw)?)
            } else {
                return Ok(None);
            }
        }
    }))
}

/// The query parameters of a request, each taken once by name; what is left is refused.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `query` (`application/x-www-form-urlencoded`, as browsers send it).
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The value of `key`, removed from the set.
    ///
    /// # Errors
    /// `key` is given more than once.
    pub fn take(&mut self, key: &str) -> Result<Option<String>, Failure> {
        let mut values: Vec<String> = Vec::new();
        self.0.retain(|(k, v)| {
            if k == key {
                values.push(v.clone());
                false
            } else {
                true
            }
        });
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(Failure::BadRequest(format!(
                "parameter `{key}` is given more than once"
            ))),
        }
    }

    /// Refuses any parameter not taken.
    ///
    /// # Errors
    /// The first unknown parameter, with the ones the route accepts.
    pub fn finish(self, accepted: &[&str]) -> Result<(), Failure> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(Failure::BadRequest(if accepted.is_empty() {
                format!("unknown parameter `{k}`: this route takes none")
            } else {
                format!("unknown parameter `{k}`: this route takes {}", accepted.join(", "))
            })),
        }
    }

    fn bucket(&mut self) -> Result<BucketWidth, Failure> {
        match self.take("bucket")? {
            None => Ok(BucketWidth::default()),
            Some(v) => v
                .parse()
                .map_err(|_| Failure::BadRequest(format!("bucket: {v:?} is neither `hour` nor `day`"))),
        }
    }

    /// `page` (from 1) and `per_page` (1 to [`MAX_PER_PAGE`]) of the overview.
    fn page(&mut self) -> Result<PageRequest, Failure> {
        let default = PageRequest::default();
        let page = match self.take("page")? {
            None => default.page,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| Failure::BadRequest(format!("page: {v:?} is not a whole number from 1")))?,
        };
        let per_page = match self.take("per_page")? {
            None => default.per_page,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PER_PAGE).contains(n))
                .ok_or_else(|| {
                    Failure::BadRequest(format!(
                        "per_page: {v:?} is not a whole number from 1 to {MAX_PER_PAGE}"
                    ))
                })?,
        };
        Ok(PageRequest { page, per_page })
    }

    fn refresh(&mut self) -> Result<u32, Failure> {
        let Some(v) = self.take("refresh")? else {
            return Ok(super::DEFAULT_REFRESH_SECONDS);
        };
        match v.parse::<u32>() {
            Ok(0) => Ok(0),
            Ok(n) if (MIN_REFRESH_SECONDS..=MAX_REFRESH_SECONDS).contains(&n) => Ok(n),
            _ => Err(Failure::BadRequest(format!(
                "refresh: {v:?} is not 0 (never) or a whole number of seconds from {MIN_REFRESH_SECONDS} to {MAX_REFRESH_SECONDS}"
            ))),
        }
    }

    /// `/api/v1/incidents`'s parameters.
    fn incidents(&mut self) -> Result<IncidentQuery, Failure> {
        let target = match self.take("target")? {
            Some(t) if t.is_empty() => return Err(Failure::BadRequest("target: must not be empty".to_string())),
            // A name with a NUL character is valid and selects nothing (`Store::incidents`),
            // as `/api/v1/targets/a%00b` is a target that does not exist (404).
            t => t,
        };
        let since = match self.take("since")? {
            None => None,
            Some(v) => Some(parse_time(&v).ok_or_else(|| {
                Failure::BadRequest(format!(
                    "since: {v:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z"
                ))
            })?),
        };
        let open = match self.take("open")?.as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                return Err(Failure::BadRequest(format!(
                    "open: {v:?} is neither `true` nor `false`"
                )))
            }
        };
        let limit = match self.take("limit")? {
            None => DEFAULT_INCIDENT_LIMIT,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_INCIDENT_LIMIT).contains(&n) => n,
                _ => {
                    return Err(Failure::BadRequest(format!(
                        "limit: {v:?} is not a whole number from 1 to {MAX_INCIDENT_LIMIT}"
                    )))
                }
            },
        };
        Ok(IncidentQuery {
            target,
            since,
            open,
            limit,
        })
    }
}

/// An RFC 3339 time; a space where the offset's `+` was (an unencoded `+` in a query string
/// decodes to a space) is read as `+`.
fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .or_else(|_| DateTime::parse_from_rfc3339(&v.replace(' ', "+")))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Answers one request; never panics on input, never waits longer than [`REQUEST_TIMEOUT`].
pub async fn handle<B>(store: &Store, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let api = path.starts_with("/api/");
    let started = std::time::Instant::now();
    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, answer(store, req)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Unavailable(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    };
    let resp = match outcome {
        Ok(resp) => resp,
        Err(f) if api => json_error(&f),
        Err(f) => html_error(&f),
    };
    tracing::debug!(
        path,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Status request."
    );
    resp
}

async fn answer<B>(store: &Store, req: &Request<B>) -> Result<Response<Full<Bytes>>, Failure> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Failure::MethodNotAllowed);
    }
    let Some(route) = route(req.uri().path())? else {
        return Err(Failure::NotFound(format!(
            "no page at {:?}; try /, /targets/{{name}}, /api/v1/targets, /api/v1/incidents or /api/v1/openapi.yaml",
            req.uri().path()
        )));
    };
    let mut params = Params::parse(req.uri().query());
    match &route {
        Route::Overview => {
            let page = html::PageOptions {
                bucket: params.bucket()?,
                refresh: params.refresh()?,
            };
            let at = params.page()?;
            params.finish(&["bucket", "refresh", "page", "per_page"])?;
            let overview = store
                .overview(page.bucket, at)
                .await
                .map_err(|e| Failure::from_store(&route, &e))?;
            Ok(page_response(StatusCode::OK, html::overview(&overview, &page)))
        }
        Route::TargetPage(name) => {
            let page = html::PageOptions {
                bucket: params.bucket()?,
                refresh: params.refresh()?,
            };
            params.finish(&["bucket", "refresh"])?;
            let detail = store
                .target_detail(name, page.bucket)
                .await
                .map_err(|e| Failure::from_store(&route, &e))?
                .ok_or_else(|| no_target(name))?;
            Ok(page_response(StatusCode::OK, html::target(&detail, &page)))
        }
        Route::ApiTargets => {
            let bucket = params.bucket()?;
            let at = params.page()?;
            params.finish(&["bucket", "page", "per_page"])?;
            let overview = store
                .overview(bucket, at)
                .await
                .map_err(|e| Failure::from_store(&route, &e))?;
            Ok(json_response(StatusCode::OK, &overview))
        }
        Route::ApiTarget(name) => {
            let bucket = params.bucket()?;
            params.finish(&["bucket"])?;
            let detail = store
                .target_detail(name, bucket)
                .await
                .map_err(|e| Failure::from_store(&route, &e))?
                .ok_or_else(|| no_target(name))?;
            Ok(json_response(StatusCode::OK, &detail))
        }
        Route::ApiIncidents => {
            let query = params.incidents()?;
            params.finish(&["target", "since", "open", "limit"])?;
            let incidents = store
                .incidents(&query)
                .await
                .map_err(|e| Failure::from_store(&route, &e))?;
            Ok(json_response(StatusCode::OK, &IncidentList { incidents }))
        }
        Route::OpenApi => {
            params.finish(&[])?;
            Ok(response(
                StatusCode::OK,
                "application/yaml; charset=utf-8",
                Bytes::from_static(super::OPENAPI_YAML.as_bytes()),
            ))
        }
    }
}

fn no_target(name: &str) -> Failure {
    Failure::NotFound(format!("no target named {name:?} has a result"))
}

/// The body of `GET /api/v1/incidents`.
#[derive(Debug, Serialize)]
pub struct IncidentList {
    /// The incidents selected, newest first.
    pub incidents: Vec<crate::store::status::Incident>,
}

/// The body of every JSON error.
#[derive(Debug, Serialize)]
struct ErrorBody {
    /// What is wrong.
    error: String,
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", Bytes::from(body)),
        Err(e) => {
            tracing::error!(error = %e, "Status page: JSON encoding failed.");
            json_error(&Failure::Internal)
        }
    }
}

fn page_response(status: StatusCode, page: maud::Markup) -> Response<Full<Bytes>> {
    let mut resp = response(status, "text/html; charset=utf-8", Bytes::from(page.into_string()));
    resp.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    resp
}

fn with_allow(mut resp: Response<Full<Bytes>>, f: &Failure) -> Response<Full<Bytes>> {
    if *f == Failure::MethodNotAllowed {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if matches!(f, Failure::Unavailable(_)) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

fn json_error(f: &Failure) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrorBody { error: f.message() }).unwrap_or_default();
    with_allow(response(f.status(), "application/json", Bytes::from(body)), f)
}

/// Seconds after which a 503 page reloads itself.
pub const UNAVAILABLE_REFRESH_SECONDS: u32 = 10;

fn html_error(f: &Failure) -> Response<Full<Bytes>> {
    let refresh = if matches!(f, Failure::Unavailable(_)) {
        UNAVAILABLE_REFRESH_SECONDS
    } else {
        0
    };
    with_allow(
        page_response(f.status(), html::error(f.status(), &f.message(), refresh)),
        f,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes_with_decoded_names() {
        assert_eq!(route("/").unwrap(), Some(Route::Overview));
        assert_eq!(route("/api/v1/targets").unwrap(), Some(Route::ApiTargets));
        assert_eq!(
            route("/targets/a%20b%2Fc%C3%A9").unwrap(),
            Some(Route::TargetPage("a b/cé".to_string()))
        );
        assert_eq!(
            route("/api/v1/targets/x/y").unwrap(),
            Some(Route::ApiTarget("x/y".to_string()))
        );
        assert_eq!(route("/nope").unwrap(), None);
        assert_eq!(route("/targets").unwrap(), None);
        assert!(matches!(route("/targets/"), Err(Failure::NotFound(_))));
        assert!(matches!(route("/targets/%FF"), Err(Failure::BadRequest(_))));
        assert!(matches!(route("/api/v1/targets/a%00b"), Err(Failure::NotFound(_))));
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let mut p = Params::parse(Some("target=a+b&since=2026-12-01T00:00:00%2B01:00&open=true&limit=5"));
        let q = p.incidents().unwrap();
        p.finish(&[]).unwrap();
        assert_eq!(q.target.as_deref(), Some("a b"));
        assert_eq!(q.since.unwrap().to_rfc3339(), "2026-11-30T23:00:00+00:00");
        assert_eq!((q.open, q.limit), (Some(true), 5));
        // Found by schemathesis (ST202: a schema-valid request rejected): a NUL is a name.
        let mut p = Params::parse(Some("target=a%00"));
        assert_eq!(p.incidents().unwrap().target.as_deref(), Some("a\0"));
        // An unencoded `+` of an offset arrives as a space.
        let mut p = Params::parse(Some("since=2026-12-01T00:00:00+01:00"));
        assert!(p.incidents().unwrap().since.is_some());
        for (query, names) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("open=yes", "open"),
            ("since=yesterday", "since"),
            ("target=", "target"),
            ("limit=1&limit=2", "limit"),
        ] {
            let e = Params::parse(Some(query)).incidents().unwrap_err();
            assert!(
                matches!(&e, Failure::BadRequest(m) if m.contains(names)),
                "{query}: {e:?}"
            );
        }
        let e = Params::parse(Some("bucket=week")).bucket().unwrap_err();
        assert!(e.message().contains("bucket"), "{e:?}");
        assert_eq!(Params::parse(Some("bucket=day")).bucket().unwrap(), BucketWidth::Day);
        assert_eq!(
            Params::parse(None).refresh().unwrap(),
            super::super::DEFAULT_REFRESH_SECONDS
        );
        assert_eq!(Params::parse(Some("refresh=0")).refresh().unwrap(), 0);
        assert!(Params::parse(Some("refresh=1")).refresh().is_err());
        let e = Params::parse(Some("bukket=day")).finish(&["bucket"]).unwrap_err();
        assert!(
            e.message().contains("bukket") && e.message().contains("bucket"),
            "{e:?}"
        );
    }
}
