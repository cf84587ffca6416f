//! The bound on what waits for a client that does not read, against the
//! real binary: a user whose four resources never read, sent large
//! messages, is disconnected at `c2s.max_outbound_bytes` on each of them,
//! and the server's memory stays bounded (before the byte bound, each
//! resource could hold `max_outbound_queue` large stanzas: 1024 × 200 KB).

mod common;

use common::server_process::ServerProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The size of one message body: most of the default stanza limit.
const BODY: usize = 200_000;
/// Messages sent to the reader's bare JID (each reaches all four
/// resources): about 20 MB per resource, far beyond the byte bound.
const MESSAGES: usize = 100;
/// Resources of the user who never reads.
const READERS: usize = 4;

fn slow_disconnects(scrape: &str, limit: &str) -> f64 {
    sample(
        scrape,
        &format!("gatehouse_slow_client_disconnects_total{{limit=\"{limit}\"}}"),
    )
}

#[actix_rt::test]
async fn a_reader_that_never_reads_is_dropped_at_the_byte_bound() {
    // The sender writes 20 MB as fast as it can: not shaped, since the
    // readers are what is tested.
    let server = ServerProcess::from_toml(&config(&fixture_auth("")).replace(
        "require_tls = false",
        "require_tls = false\nread_rate = 1073741824\nread_burst = 1073741824",
    ));
    let (c2s, http) = server.listeners();

    let mut readers = Vec::new();
    for i in 0..READERS {
        let (mut reader, _) = Client::login(c2s, "alice", "wonderland", &format!("r{i}")).await;
        reader.send("<presence/>").await;
        // From here on, nobody reads these sockets.
        readers.push(reader.into_stream());
    }
    let (sender, _) = Client::login(c2s, "bob", "builder", "sender").await;
    let (mut from_server, mut to_server) = sender.into_stream().into_split();
    // The sender reads whatever comes back (errors once alice is gone), so
    // only alice's resources are slow.
    let drained = tokio::spawn(async move {
        let mut sink = vec![0; 64 * 1024];
        while from_server.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let before_scrape = http_get(http, "/metrics").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = server.rss_bytes();

    let body = "x".repeat(BODY);
    let message =
        format!("<message to='alice@localhost' type='chat'><body>{body}</body></message>");
    for _ in 0..MESSAGES {
        to_server.write_all(message.as_bytes()).await.unwrap();
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    let after_scrape = loop {
        let scrape = http_get(http, "/metrics").await;
        if slow_disconnects(&scrape, "bytes") - slow_disconnects(&before_scrape, "bytes")
            >= READERS as f64
        {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the readers were not dropped:\n{scrape}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let after = server.rss_bytes();
    assert_eq!(
        slow_disconnects(&after_scrape, "bytes") - slow_disconnects(&before_scrape, "bytes"),
        READERS as f64
    );
    assert_eq!(
        slow_disconnects(&after_scrape, "stanzas"),
        slow_disconnects(&before_scrape, "stanzas")
    );
    // Each resource held at most 1 MiB queued plus the one write in
    // progress (64 KiB) and one stanza; the sender's stanzas are parsed and
    // copied one at a time. 4 × (1 MiB + 64 KiB + 200 KB) is about 5 MiB;
    // 32 MiB leaves room for the allocator's slack. Without the byte bound
    // each resource would keep about 100 × 200 KB (20 MB) less what the
    // kernel took: 60 MB or more for the four.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "the server grew by {grown} bytes ({before} → {after})"
    );
    // The dropped resources see the end of their stream.
    for mut reader in readers {
        let mut sink = Vec::new();
        let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the server closed the reader's connection");
    }
    drop(to_server);
    drained.abort();
}
