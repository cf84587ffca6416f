//! `[http]`: the loopback operator listener — `/metrics`, `/health`, with
//! `[roster]` the roster refresh, and with `admin_token` the operator's
//! `/admin/…` endpoints — separate from the public listener for web
//! clients `[web]`.
//!
//! Owns this section's type and defaults; its checks (the admin token, and
//! clashes with the other listeners) are `Config::validate`'s, as they look
//! at other sections too. Must not touch the rest of the file's format or
//! start anything: `Server::bind` starts the listener (`crate::http`).

use super::Secret;
use serde::Deserialize;
use std::net::SocketAddr;

/// `[http]`: the listener for `/metrics`, `/health` and, with `[roster]`,
/// `/roster_admin/refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the HTTP listener; loopback by default because
    /// metrics and the roster refresh are not meant for the public.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// The bearer token of the operator's endpoints (`POST /admin/reload`,
    /// which `gatehouse reload` uses); without it they are off.
    #[serde(default)]
    pub admin_token: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            admin_token: None,
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5280))
}
