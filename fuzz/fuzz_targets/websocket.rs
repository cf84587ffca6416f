//! Fuzz target: WebSocket messages (RFC 7395 framing).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::websocket(data));
