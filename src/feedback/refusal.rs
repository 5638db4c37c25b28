//! A request a webhook route refuses: the status to answer and a label for logs and metrics.

use axum::http::StatusCode;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The answer: 400 unreadable, 401 not authenticated, 403 signature wrong.
    pub status: StatusCode,
    /// A label naming the cause, never quoting the request.
    pub why: &'static str,
}

impl Refusal {
    /// 400: the body is not what the provider sends.
    pub const fn malformed(why: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            why,
        }
    }

    /// 403: the signature does not verify.
    pub const fn forbidden(why: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            why,
        }
    }
}
