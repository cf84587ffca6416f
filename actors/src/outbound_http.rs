//! What every HTTP request Gatehouse sends to the application (roster
//! fetches, MUC join checks) shares: the configured `Authorization` value
//! as a header that never shows in debug output, and reading a response
//! body within a size limit.
//!
//! It owns only these two rules; it must not build requests, pick URLs or
//! decide what an answer means.

use reqwest::header::{HeaderValue, InvalidHeaderValue};

/// `value` as a header value marked sensitive, so it is kept out of any
/// debug output of the request. Fails when it is not a valid header value
/// (config validation has already refused those).
pub fn sensitive_header_value(value: &str) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut header = HeaderValue::from_str(value)?;
    header.set_sensitive(true);
    Ok(header)
}

/// Why a response body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body (or its announced `Content-Length`) passed the limit.
    #[error("the response body is too large")]
    TooLarge,
    /// The connection failed while reading it.
    #[error("reading the response body: {0}")]
    Transport(#[source] reqwest::Error),
}

/// The whole body of `response`, failing as soon as it is known to be
/// longer than `limit` bytes: from its `Content-Length` before reading, or
/// while reading when it has none or lies.
pub async fn read_bounded_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::sensitive_header_value;

    #[test]
    fn the_header_is_sensitive_and_line_breaks_are_refused() {
        let header = sensitive_header_value("Bearer s3cr3t").unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("s3cr3t"));
        assert!(sensitive_header_value("Bearer a\r\nX-Evil: 1").is_err());
    }
}
