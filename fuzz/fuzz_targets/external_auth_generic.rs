//! Fuzz target: the external-auth line protocol (mod_auth_external).

#![no_main]

use gatehouse_actors::auth::Protocol;

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::external_auth(
    Protocol::Generic,
    data
));
