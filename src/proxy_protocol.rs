//! The PROXY protocol v2 header a trusted load balancer (HAProxy's
//! `send-proxy-v2`) puts before a client's bytes, read on connections from
//! `limits.trusted_proxies` before anything else, so that the limits and
//! the logs see the client rather than the balancer. Connections from any
//! other address get no such reading: a header they send is just bytes
//! that are not XML, and their stream ends with `<not-well-formed/>`.
//!
//! Owns reading and parsing the header (through the `ppp` crate). Must not
//! touch what the address is used for.

use ppp::v2::{Addresses, Command, Header};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The signature, version and command, family and protocol, and length.
const FIXED: usize = 16;

/// The most address and TLV bytes accepted after the fixed part: the
/// addresses take at most 216 (UNIX), HAProxy's TLVs a few hundred.
const MAX_REST: usize = 1024;

/// How long a trusted proxy has to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a trusted proxy's connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the PROXY header announces {0} bytes of addresses, more than allowed")]
    TooLong(usize),
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// Reads the header at the start of `stream` (from the proxy at `proxy`)
/// and returns the client it names: the proxy itself for a `LOCAL`
/// connection (its own health check) or one without IP addresses. Reads
/// exactly the header, so the client's bytes after it stay unread.
pub async fn client_address(
    stream: &mut TcpStream,
    proxy: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    let mut header = vec![0; FIXED];
    stream.read_exact(&mut header).await?;
    let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if rest > MAX_REST {
        return Err(ProxyHeaderError::TooLong(rest));
    }
    header.resize(FIXED + rest, 0);
    stream.read_exact(&mut header[FIXED..]).await?;
    let parsed = Header::try_from(header.as_slice())
        .map_err(|error| ProxyHeaderError::Invalid(error.to_string()))?;
    Ok(match (parsed.command, parsed.addresses) {
        (Command::Proxy, Addresses::IPv4(ip)) => {
            SocketAddr::from((ip.source_address, ip.source_port))
        }
        (Command::Proxy, Addresses::IPv6(ip)) => {
            SocketAddr::from((ip.source_address, ip.source_port))
        }
        _ => proxy,
    })
}
