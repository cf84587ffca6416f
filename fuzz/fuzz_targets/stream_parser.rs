//! Fuzz target: the stream parser, fed in pieces.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::stream_parser(data));
