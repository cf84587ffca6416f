//! Fuzz target: the application's roster JSON (mod_http_roster_admin).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::roster_json(data));
