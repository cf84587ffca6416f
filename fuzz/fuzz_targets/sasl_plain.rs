//! Fuzz target: SASL PLAIN decoding.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::sasl_plain(data));
