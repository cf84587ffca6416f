//! What the fuzz targets in `fuzz/` run of the application (the `fuzzing`
//! feature); those of the domain are in `gatehouse_actors::fuzzing`.

use crate::config::Config;
use std::path::Path;

/// The config loader, fed a file's text: it accepts it or reports
/// problems (each reported problem can be shown), and it never panics. The
/// file lies in a directory that does not exist, so relative paths in it
/// name no file; absolute ones are checked as they are.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = Config::parse(text, Path::new("/nonexistent/gatehouse/gatehouse.toml")) {
        let _ = error.to_string();
    }
}

/// The body the application posts to `/roster_admin/refresh`: read as a
/// JSON array of usernames, each name then taken as the refresh takes it.
pub fn roster_refresh(data: &[u8]) {
    if let Ok(users) = crate::http::refresh_users(data) {
        gatehouse_actors::fuzzing::refreshed_users(&users);
    }
}
