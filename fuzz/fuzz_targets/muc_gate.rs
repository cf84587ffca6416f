//! Fuzz target: a MUC gate's answer (mod_muc_http_auth).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::muc_gate(data));
