//! What every HTTP request Gatehouse sends to the application (roster
//! fetches, MUC join checks) shares: a client that never follows
//! redirects, the configured `Authorization` value as a header that never
//! shows in debug output, and reading a response body within a size limit.
//! The redirect counter is shared with the HTTP auth backend, whose hyper
//! connections follow nothing by themselves.
//!
//! It owns only these rules; it must not build requests, pick URLs or
//! decide what an answer means.
//!
//! Redirects are refused, not followed even to the same origin: the
//! application is configured by URL, so an answer elsewhere is a
//! misconfiguration or an attack. Following would send the user's name
//! (and, were it forwarded, the `Authorization` secret) to wherever the
//! `Location` points, lets anyone who controls an answer make Gatehouse
//! request internal addresses (SSRF), and serves a stranger's answer as a
//! roster or a verdict. Prosody's `net.http` does not follow them for these
//! modules either. A 3xx is an error like a 5xx, and counted apart.

use reqwest::header::{HeaderValue, InvalidHeaderValue};

/// Help texts of the outbound HTTP metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_http_redirects_refused_total",
        "Answers of the application that were redirects (3xx), treated as errors \
         and not followed, by service: roster, muc_gate, auth"
    );
}

/// The builder every reqwest client to the application starts from: it
/// follows no redirect, so a 3xx reaches the caller, which must treat it
/// as an error through [`redirect_refused`].
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

/// Counts a 3xx answer of `service` (`roster`, `muc_gate`, `auth`), which
/// the caller then reports as an error.
pub fn redirect_refused(service: &'static str) {
    metrics::counter!("gatehouse_http_redirects_refused_total", "service" => service).increment(1);
}

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
