//! Fuzz target: the body of a roster refresh.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse::fuzzing::roster_refresh(data));
