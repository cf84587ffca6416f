//! Fuzz target: a BOSH request body.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::bosh_body(data));
