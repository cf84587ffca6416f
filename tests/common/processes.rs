//! Child-process checks shared by the server tests (`tests/`) and the pool
//! tests (`actors/tests/`, which include this file by path): the pids the
//! fixture programs record, and whether a pid still runs.

use std::collections::BTreeSet;
use std::path::Path;

/// The pids the fixture programs (and wrapper scripts) recorded in `dir`,
/// one empty file named after each.
pub fn pids(dir: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid` is running: it exists and is not a zombie.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            state != Some(Some('Z'))
        })
        .unwrap_or(false)
}
