//! The MUC gauges, exactly: this binary holds this one test, so no other
//! server shares its metrics recorder while it runs.

mod common;
mod muc_support;

use common::*;
use muc_support::*;

/// Scrapes until the rooms and occupants gauges read `rooms` and
/// `occupants`.
async fn gauges(server: &TestServer, rooms: f64, occupants: f64) {
    server
        .metrics_when(&format!("{rooms} rooms, {occupants} occupants"), |scrape| {
            sample(scrape, "gatehouse_muc_rooms") == rooms
                && sample(scrape, "gatehouse_muc_occupants") == occupants
        })
        .await;
}

#[actix_rt::test]
async fn rooms_and_occupants_follow_joins_leaves_and_disconnects() {
    let server = TestServer::start(&muc_config("persistent_rooms = [\"lobby\"]"));
    // The persistent room exists from the start.
    gauges(&server, 1.0, 0.0).await;
    let mut alice = login(&server, "alice", "wonderland").await;
    let mut bob = login(&server, "bob", "builder").await;
    join(&mut alice, "tea", "Alice").await.unwrap();
    gauges(&server, 2.0, 1.0).await;
    join(&mut bob, "tea", "Bob").await.unwrap();
    join(&mut bob, "lobby", "Bob").await.unwrap();
    gauges(&server, 2.0, 3.0).await;

    // Leaving lowers the occupants; the room stays while Alice is in.
    bob.send("<presence to='tea@rooms.localhost/Bob' type='unavailable'/>")
        .await;
    gauges(&server, 2.0, 2.0).await;
    // A dropped connection leaves its rooms: the temporary room goes, the
    // persistent one stays.
    drop(alice);
    gauges(&server, 1.0, 1.0).await;
    drop(bob);
    gauges(&server, 1.0, 0.0).await;
}
