//! `ApiJson`, the JSON body extractor every handler uses instead of `axum::Json`.
//!
//! For: mapping axum's JSON rejections (syntax error, wrong shape, wrong content type,
//! body over the limit) to `ApiError`, so the client gets the envelope rather than
//! axum's plain text. The size limit itself is `DefaultBodyLimit`, set by the router.
//! Not for: validating field contents (that is `api.rs`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Longest parser message echoed back in `details.reason`: serde messages can quote
/// the input, and a reply should not grow with it.
const REJECTION_REASON_CHARS_MAX: usize = 200;

/// A JSON request body, rejected with an `ApiError`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(_) | JsonRejection::JsonDataError(_) => {
                let reason: String = rejection
                    .body_text()
                    .chars()
                    .take(REJECTION_REASON_CHARS_MAX)
                    .collect();
                ApiError::InvalidInput {
                    message: "request body is not valid JSON for this endpoint".to_owned(),
                    details: Some(serde_json::json!({ "field": "body", "reason": reason })),
                }
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            // Reading the body failed: over the limit (413) or a broken stream (400).
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::InvalidInput {
                message: "request body could not be read".to_owned(),
                details: Some(serde_json::json!({ "field": "body", "reason": other.body_text() })),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::header;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Small {
        #[allow(dead_code)]
        n: u8,
    }

    async fn extract<T: DeserializeOwned>(
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<ApiJson<T>, ApiError> {
        let mut request = Request::new(Body::from(body));
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.parse().expect("header value"),
        );
        ApiJson::<T>::from_request(request, &()).await
    }

    #[tokio::test]
    async fn rejections_map_to_api_errors() {
        let syntax = extract::<Probe>("application/json", b"{\"name\":".to_vec()).await;
        assert!(matches!(syntax, Err(ApiError::InvalidInput { .. })));
        let shape = extract::<Probe>("application/json", b"{\"nom\":1}".to_vec()).await;
        assert!(matches!(shape, Err(ApiError::InvalidInput { .. })));
        let media = extract::<Probe>("text/plain", b"{\"name\":\"a\"}".to_vec()).await;
        assert!(matches!(media, Err(ApiError::UnsupportedMediaType)));
        let ok = extract::<Probe>("application/json", b"{\"name\":\"a\"}".to_vec()).await;
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn long_parser_messages_are_cut() {
        // serde quotes an unexpected string in full: the reply must not.
        let body = format!("{{\"n\": \"{}\"}}", "k".repeat(1000));
        let Err(ApiError::InvalidInput { details, .. }) =
            extract::<Small>("application/json", body.into_bytes()).await
        else {
            panic!("expected InvalidInput");
        };
        let details = details.expect("details");
        let reason = details["reason"].as_str().expect("reason");
        assert_eq!(reason.chars().count(), REJECTION_REASON_CHARS_MAX);
        assert_eq!(details["field"], "body");
    }
}
