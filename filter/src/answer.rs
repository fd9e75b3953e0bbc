//! A response the filter sends itself instead of the upstream's (a local reply): the 402
//! challenge, the token endpoint's answers and every JSON error.

use x402_protocol::settler_api::ApiError;

/// A response the filter sends itself (`send_http_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A JSON answer that no cache may store.
    pub fn json(status: u32, body: Vec<u8>) -> Self {
        HttpAnswer {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }
    /// `{"error": code, "message": message}`, the settler's error shape.
    pub fn error(status: u32, code: &str, message: &str) -> Self {
        HttpAnswer::json(status, ApiError::new(code, message).to_json().into_bytes())
    }
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
