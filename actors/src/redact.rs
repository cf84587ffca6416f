//! What may be shown of a configured URL: in `Debug` output and logs a URL
//! keeps its scheme, host, port and path, and loses what often carries a
//! secret — user info and the query (API keys, tokens).
//!
//! It owns only that rule; it must not decide where URLs are logged.

/// `url` with any user info replaced by `***` and any query by `***`; an
/// unparsable one is shown as `***` whole.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut url) = url::Url::parse(url) else {
        return "***".to_owned();
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Only URLs without a host refuse user info, and they have none.
        let _ = url.set_password(None);
        let _ = url.set_username("***");
    }
    if url.query().is_some() {
        url.set_query(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn user_info_and_query_are_hidden() {
        assert_eq!(
            redacted_url("https://user:pw@gate.example/check?key=s3cr3t"),
            "https://***@gate.example/check?***"
        );
        assert_eq!(
            redacted_url("http://gate.example:8080/check"),
            "http://gate.example:8080/check"
        );
        assert_eq!(redacted_url("not a url with a s3cr3t"), "***");
    }
}
