//! Child-process checks shared by the server tests (`tests/`) and the pool
//! tests (`actors/tests/`, which include this file by path): the pids the
//! fixture programs record, whether a pid still runs, and the interpreter
//! that runs them.
#![allow(dead_code)] // each includer uses a different part of this

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

/// The Python interpreter itself, not a version-manager shim in front of
/// it: a spawned child's pid is then the pid the fixture records.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

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
