//! Fuzz target: the external-auth length-prefixed protocol (ejabberd extauth).

#![no_main]

use gatehouse_actors::auth::Protocol;

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_actors::fuzzing::external_auth(
    Protocol::Ejabberd,
    data
));
