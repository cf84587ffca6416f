//! The external-process backend (mod_auth_external / ejabberd extauth):
//! the two wire protocols, request validation, and one long-running child
//! process per worker.
//!
//! It owns the bytes exchanged with a child process. It must not queue or
//! schedule requests (the pool does) nor know about XMPP.

use super::pool::{PoolConfig, PoolHandle, Worker, WorkerFactory};
use super::AuthCommand;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{
    Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec,
};

/// The longest request line in the generic protocol, without its `\n`.
const MAX_GENERIC_REQUEST: usize = 1000;
/// The longest request payload in the ejabberd protocol (a u16 length).
const MAX_EJABBERD_REQUEST: usize = u16::MAX as usize;
/// Replies are `1` or `0`; anything longer is garbage, read no further.
const MAX_REPLY_LINE: usize = 16;

/// The wire protocol of the auth program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Prosody's: one request line, one reply line `1` or `0`.
    Generic,
    /// ejabberd's: 2-byte big-endian length, then the request; the reply is
    /// exactly `00 02 00 0N`.
    Ejabberd,
}

/// Settings of an external-process pool.
#[derive(Clone, Debug)]
pub struct ExternalConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    pub protocol: Protocol,
    /// Processes in the pool, each with one request in flight.
    pub processes: usize,
    /// Requests that may wait for a free process.
    pub queue: usize,
    /// How long a process may take to answer before it is killed.
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
}

impl PoolHandle {
    /// Starts a pool of external auth processes. Must be called inside a
    /// running actix System.
    pub fn start_external(config: ExternalConfig) -> PoolHandle {
        let protocol = config.protocol;
        PoolHandle::start(
            PoolConfig {
                backend: "external",
                workers: config.processes,
                queue: config.queue,
                timeout: config.timeout,
                queue_timeout: config.queue_timeout,
            },
            ExternalBackend {
                command: config.command,
                protocol,
            },
            Arc::new(move |command| request_line(command, protocol).map(drop)),
        )
    }
}

/// The request text `cmd:user:host[:pass]`, or why it cannot be sent: a
/// NUL, CR or LF anywhere, a `:` in the user or host (they are delimited by
/// it; only the password, which comes last, may hold one), or too long for
/// the protocol.
pub fn request_line(command: &AuthCommand, protocol: Protocol) -> Result<String, &'static str> {
    let (user, host, password) = match command {
        AuthCommand::Auth {
            user,
            host,
            password,
        }
        | AuthCommand::SetPass {
            user,
            host,
            password,
        }
        | AuthCommand::TryRegister {
            user,
            host,
            password,
        } => (user, host, Some(password.expose())),
        AuthCommand::IsUser { user, host } | AuthCommand::RemoveUser { user, host } => {
            (user, host, None)
        }
    };
    if user.contains(':') || host.contains(':') {
        return Err("user or host contains ':'");
    }
    let mut line = format!("{}:{user}:{host}", command.name());
    if let Some(password) = password {
        line.push(':');
        line.push_str(password);
    }
    if line.bytes().any(|b| matches!(b, b'\0' | b'\r' | b'\n')) {
        return Err("NUL, CR or LF in the request");
    }
    let limit = match protocol {
        Protocol::Generic => MAX_GENERIC_REQUEST,
        Protocol::Ejabberd => MAX_EJABBERD_REQUEST,
    };
    if line.len() > limit {
        return Err("request too long for the protocol");
    }
    Ok(line)
}

/// Starts auth processes.
pub struct ExternalBackend {
    command: Vec<String>,
    protocol: Protocol,
}

impl WorkerFactory for ExternalBackend {
    type Worker = ExternalProcess;

    async fn start(&self) -> std::io::Result<ExternalProcess> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(ExternalProcess {
            child,
            protocol: self.protocol,
            requests: FramedWrite::new(stdin, RequestCodec::new(self.protocol)),
            replies: FramedRead::new(stdout, ReplyCodec::new(self.protocol)),
        })
    }

    fn describe(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }
}

/// One running auth process.
pub struct ExternalProcess {
    /// Killed (and reaped) on stop; killed on drop as a last resort.
    child: Child,
    protocol: Protocol,
    requests: FramedWrite<ChildStdin, RequestCodec>,
    replies: FramedRead<ChildStdout, ReplyCodec>,
}

impl Worker for ExternalProcess {
    async fn serve(&mut self, command: &AuthCommand) -> Result<bool, String> {
        // Validated before admission; checked again so nothing unsendable
        // can ever be written.
        let line = request_line(command, self.protocol).map_err(str::to_owned)?;
        self.requests
            .send(line)
            .await
            .map_err(|e| format!("cannot write to the process: {}", e.kind()))?;
        match self.replies.next().await {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the process closed its output (exited?)".into()),
        }
    }

    async fn broken(&mut self) -> String {
        match self.replies.next().await {
            None => "the process exited".into(),
            Some(_) => "the process wrote output without being asked".into(),
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Frames requests: a line (`LinesCodec` appends `\n`) or a u16 length
/// prefix (`LengthDelimitedCodec`).
enum RequestCodec {
    Lines(LinesCodec),
    Frames(LengthDelimitedCodec),
}

impl RequestCodec {
    fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Generic => {
                RequestCodec::Lines(LinesCodec::new_with_max_length(MAX_GENERIC_REQUEST))
            }
            Protocol::Ejabberd => RequestCodec::Frames(
                LengthDelimitedCodec::builder()
                    .length_field_length(2)
                    .big_endian()
                    .max_frame_length(MAX_EJABBERD_REQUEST)
                    .new_codec(),
            ),
        }
    }
}

impl Encoder<String> for RequestCodec {
    type Error = std::io::Error;

    fn encode(&mut self, line: String, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match self {
            RequestCodec::Lines(codec) => codec.encode(line, dst).map_err(std::io::Error::other),
            RequestCodec::Frames(codec) => codec.encode(Bytes::from(line), dst),
        }
    }
}

/// Why a reply was not a valid answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("invalid reply (not \"1\" or \"0\")")]
    Garbage,
    #[error("cannot read from the process: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes replies into yes or no.
enum ReplyCodec {
    Lines(LinesCodec),
    Frames(LengthDelimitedCodec),
}

impl ReplyCodec {
    fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Generic => ReplyCodec::Lines(LinesCodec::new_with_max_length(MAX_REPLY_LINE)),
            Protocol::Ejabberd => ReplyCodec::Frames(
                LengthDelimitedCodec::builder()
                    .length_field_length(2)
                    .big_endian()
                    .max_frame_length(2)
                    .new_codec(),
            ),
        }
    }
}

impl Decoder for ReplyCodec {
    type Item = bool;
    type Error = ReplyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<bool>, ReplyError> {
        match self {
            // LinesCodec strips the `\n` and a trailing `\r`.
            ReplyCodec::Lines(codec) => match codec.decode(src) {
                Ok(None) => Ok(None),
                Ok(Some(line)) if line == "1" => Ok(Some(true)),
                Ok(Some(line)) if line == "0" => Ok(Some(false)),
                Ok(Some(_)) => Err(ReplyError::Garbage),
                Err(tokio_util::codec::LinesCodecError::Io(e)) => Err(e.into()),
                Err(_) => Err(ReplyError::Garbage),
            },
            ReplyCodec::Frames(codec) => match codec.decode(src) {
                Ok(None) => Ok(None),
                Ok(Some(frame)) if frame[..] == [0, 1] => Ok(Some(true)),
                Ok(Some(frame)) if frame[..] == [0, 0] => Ok(Some(false)),
                Ok(Some(_)) => Err(ReplyError::Garbage),
                // A frame longer than 2 bytes is refused by the codec.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(ReplyError::Garbage),
                Err(e) => Err(e.into()),
            },
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<bool>, ReplyError> {
        match self.decode(src)? {
            Some(answer) => Ok(Some(answer)),
            // A partial reply at EOF is garbage; nothing at all is a clean end.
            None if src.is_empty() => Ok(None),
            None => Err(ReplyError::Garbage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;

    fn auth(user: &str, host: &str, password: &str) -> AuthCommand {
        AuthCommand::Auth {
            user: user.into(),
            host: host.into(),
            password: Password::new(password),
        }
    }

    #[test]
    fn request_lines() {
        let g = Protocol::Generic;
        assert_eq!(
            request_line(&auth("alice", "example.com", "a:b:c"), g).unwrap(),
            "auth:alice:example.com:a:b:c"
        );
        let isuser = AuthCommand::IsUser {
            user: "bob".into(),
            host: "h".into(),
        };
        assert_eq!(request_line(&isuser, g).unwrap(), "isuser:bob:h");
        let setpass = AuthCommand::SetPass {
            user: "bob".into(),
            host: "h".into(),
            password: Password::new("x"),
        };
        assert_eq!(request_line(&setpass, g).unwrap(), "setpass:bob:h:x");
        let remove = AuthCommand::RemoveUser {
            user: "bob".into(),
            host: "h".into(),
        };
        assert_eq!(
            request_line(&remove, Protocol::Ejabberd).unwrap(),
            "removeuser:bob:h"
        );
    }

    #[test]
    fn unsendable_requests_are_refused() {
        let g = Protocol::Generic;
        for bad in ["pass\nword", "pass\rword", "pass\0word"] {
            assert!(
                request_line(&auth("alice", "h", bad), g).is_err(),
                "{bad:?}"
            );
            assert!(request_line(&auth("alice", "h", bad), Protocol::Ejabberd).is_err());
        }
        assert!(request_line(&auth("al:ice", "h", "x"), g).is_err());
        assert!(request_line(&auth("alice", "[::1]", "x"), g).is_err());
        let long = "x".repeat(MAX_GENERIC_REQUEST);
        assert!(request_line(&auth("alice", "h", &long), g).is_err());
        assert!(request_line(&auth("alice", "h", &long), Protocol::Ejabberd).is_ok());
        let longer = "x".repeat(MAX_EJABBERD_REQUEST);
        assert!(request_line(&auth("alice", "h", &longer), Protocol::Ejabberd).is_err());
    }

    #[test]
    fn request_framing() {
        let mut out = BytesMut::new();
        RequestCodec::new(Protocol::Generic)
            .encode("auth:a:b:c".into(), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"auth:a:b:c\n");
        let mut out = BytesMut::new();
        RequestCodec::new(Protocol::Ejabberd)
            .encode("isuser:a:b".into(), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\x00\x0aisuser:a:b");
    }

    fn decode_all(protocol: Protocol, input: &[u8]) -> Vec<Result<bool, String>> {
        let mut codec = ReplyCodec::new(protocol);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(answer)) => out.push(Ok(answer)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn generic_replies() {
        assert_eq!(
            decode_all(Protocol::Generic, b"1\n0\r\n1\n"),
            vec![Ok(true), Ok(false), Ok(true)]
        );
        assert!(decode_all(Protocol::Generic, b"yes\n")[0].is_err());
        assert!(decode_all(Protocol::Generic, b"11\n")[0].is_err());
        assert!(decode_all(Protocol::Generic, &[b'1'; 100])[0].is_err());
        assert!(
            decode_all(Protocol::Generic, b"1")[0].is_err(),
            "no newline before EOF"
        );
    }

    #[test]
    fn ejabberd_replies() {
        assert_eq!(
            decode_all(Protocol::Ejabberd, b"\x00\x02\x00\x01\x00\x02\x00\x00"),
            vec![Ok(true), Ok(false)]
        );
        assert!(decode_all(Protocol::Ejabberd, b"\x00\x02\x00\x02")[0].is_err());
        assert!(decode_all(Protocol::Ejabberd, b"\x00\x02\x01\x01")[0].is_err());
        assert!(decode_all(Protocol::Ejabberd, b"\x00\x05hello")[0].is_err());
        assert!(decode_all(Protocol::Ejabberd, b"\x00\x01\x01")[0].is_err());
    }
}
