//! `gatehouse-floor`: the floor under Gatehouse's cost per login. It
//! accepts client connections and answers the load generator's login
//! (`gatehouse-loadgen`, any storm mode over `tcp`, `starttls` or `tls`)
//! with canned replies: the socket work every XMPP server must do for that
//! login — accept, the same reads and writes, the TLS handshake, close —
//! and nothing else: no XML parser, no authentication, no session, no
//! routing. `bench/compare.sh` reports Gatehouse's figures as ratios to it.
//!
//! The runtime has Gatehouse's shape, so that the ratio measures what
//! Gatehouse does per login rather than a different scheduler: one thread
//! accepts (Gatehouse's accept loop runs on the actix System thread) and
//! hands each connection, round-robin, to one of `--threads` workers, each
//! a single-threaded tokio runtime of its own (Gatehouse's session
//! arbiters, one per core). A work-stealing runtime would skip the
//! cross-thread hand-off Gatehouse pays for and move tasks between
//! threads, which Gatehouse never does.
//!
//! This module owns the command line, the runtimes and accepting; the
//! conversation on a connection is [`login`]'s, the certificate
//! [`tls`]'s. It must not grow into a server: anything a real server
//! does beyond the socket work (parsing, checking, state) belongs to
//! Gatehouse, not to its floor.

mod login;
mod tls;

use clap::Parser;
use login::Offer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Handle};

/// The listen backlog, as `bench/compare.sh` configures Gatehouse's, so a
/// storm's burst of connections waits in the kernel alike.
const BACKLOG: u32 = 1024;

/// A canned-reply XMPP login server: the floor under a real server's cost
/// per login.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Plain client listener, HOST:PORT (port 0: any free port, printed);
    /// STARTTLS is offered there when a certificate is given.
    #[arg(long, default_value = "127.0.0.1:5222")]
    listen: SocketAddr,
    /// Direct TLS (XEP-0368) listener, HOST:PORT (port 0 allowed); needs a
    /// certificate.
    #[arg(long, requires = "tls_cert")]
    direct_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (for example the repository's
    /// examples/localhost.crt).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (for example examples/localhost.key).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Offer SASL only after STARTTLS, like Gatehouse's c2s.require_tls.
    #[arg(long, requires = "tls_cert")]
    require_tls: bool,
    /// Send no TLS session tickets, so every handshake is a full one (as
    /// Gatehouse's `c2s.tls_tickets = false`); by default one stateless
    /// ticket per handshake, as Gatehouse's default.
    #[arg(long, requires = "tls_cert")]
    no_tls_tickets: bool,
    /// Worker threads running the connections (default: one per core, as
    /// Gatehouse's session arbiters).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = serve(args) {
        eprintln!("gatehouse-floor: {error}");
        std::process::exit(2);
    }
}

/// Starts the workers, binds the listeners, prints where they are and
/// accepts until the process is killed.
fn serve(args: Args) -> Result<(), String> {
    // A held storm needs a descriptor per session, as Gatehouse raises
    // its own limit for.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Acceptors::load(cert, key, !args.no_tls_tickets)?),
        _ => None,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let workers = (0..threads)
        .map(|i| worker(i).map_err(|e| format!("worker runtime: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let offer = match (&tls, args.require_tls) {
        (None, _) => Offer::Plain,
        (Some(tls), false) => Offer::Starttls(tls.starttls.clone()),
        (Some(tls), true) => Offer::RequiredStarttls(tls.starttls.clone()),
    };
    let accepting = Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("accept runtime: {e}"))?;
    accepting.block_on(async {
        let (plain, bound) = bind(args.listen)?;
        println!("c2s {bound}");
        let direct = match (args.direct_tls_listen, tls) {
            (Some(addr), Some(tls)) => {
                let (listener, bound) = bind(addr)?;
                println!("direct-tls {bound}");
                Some((listener, tls.direct))
            }
            _ => None,
        };
        let plain = accept(plain, &workers, move |socket| {
            login::plain(socket, offer.clone())
        });
        match direct {
            Some((listener, acceptor)) => {
                let direct = accept(listener, &workers, move |socket| {
                    login::direct_tls(socket, acceptor.clone())
                });
                tokio::join!(plain, direct);
            }
            None => plain.await,
        }
        Ok(())
    })
}

/// Worker `i`: a single-threaded runtime on a thread of its own, running
/// whatever is spawned on the handle returned.
fn worker(i: usize) -> std::io::Result<Handle> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("floor-worker-{i}"))
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// A listener on `addr` with [`BACKLOG`], and where it is bound (the real
/// port when `addr` asks for 0).
fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            let listener = socket.listen(BACKLOG)?;
            let bound = listener.local_addr()?;
            Ok((listener, bound))
        })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Accepts forever, running `conversation` on each connection on the next
/// worker in turn. The socket leaves this thread's reactor for the
/// worker's, as Gatehouse's do.
async fn accept<F>(
    listener: TcpListener,
    workers: &[Handle],
    conversation: impl Fn(tokio::net::TcpStream) -> F + Clone + Send + 'static,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    for next in (0..workers.len()).cycle() {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(_) => {
                // Out of descriptors, typically: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(socket) = socket.into_std() else {
            continue;
        };
        let conversation = conversation.clone();
        workers[next].spawn(async move {
            if let Ok(socket) = tokio::net::TcpStream::from_std(socket) {
                conversation(socket).await;
            }
        });
    }
}
