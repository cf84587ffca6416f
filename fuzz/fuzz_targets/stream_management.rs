//! Fuzz target: XEP-0198 stream management.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::stream_management(data));
