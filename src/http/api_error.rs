//! The JSON error answer of the HTTP API: a status code, the message, and the field at fault.

use crate::UnixMs;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: `{"error": message, "field": field}` with its status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: u16,
    /// What is wrong, in words.
    pub error: String,
    /// The request field at fault (a JSON member, a query parameter, `path` or `body`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The same error with its field named under `prefix` (`checks[2].` + `limit`), for members of arrays.
    pub fn under(mut self, prefix: &str) -> ApiError {
        if let Some(field) = &mut self.field {
            *field = format!("{prefix}{field}");
        }
        self
    }

    /// A `400` naming `field`.
    pub fn bad_field(field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            error: error.into(),
            field: Some(field.to_string()),
        }
    }

    /// An answer with `status` and no field.
    pub fn with_status(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    /// An answer with `status` naming `field` (`401`, `403`, `413`, `414`, `415` of the request gate).
    pub fn with_field(status: u16, field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: Some(field.to_string()),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self)).into_response()
    }
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::with_status(404, format!("no route for {}", uri.path()))
}

pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::with_status(405, format!("{method} is not allowed on {}", uri.path()))
}

/// The rest of the path after a route's prefix (a key, which may contain `/`), percent-decoded; a path that
/// does not decode is a `400` naming `path`.
#[derive(Debug)]
pub(crate) struct KeyPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(key)) => Ok(KeyPath(key)),
            Err(rejection) => Err(ApiError::bad_field("path", rejection.body_text())),
        }
    }
}

/// The query parameters; a query that does not decode is a `400` naming `query`.
#[derive(Debug)]
pub(crate) struct Params(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(map)) => Ok(Params(map)),
            Err(rejection) => Err(ApiError::bad_field("query", rejection.body_text())),
        }
    }
}

impl Params {
    /// `?epoch=N`, or the window index of `now_ms` in `window` when absent.
    pub(crate) fn epoch(
        &self,
        window: crate::counter::Window,
        now_ms: u64,
    ) -> Result<u64, ApiError> {
        match self.0.get("epoch") {
            None => Ok(window.epoch_at(UnixMs::new(now_ms))),
            Some(e) => e.parse::<u64>().map_err(|_| {
                ApiError::bad_field("epoch", format!("expected an integer, got {e:?}"))
            }),
        }
    }
}
