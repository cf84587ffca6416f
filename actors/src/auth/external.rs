//! The external-process backend (mod_auth_external / ejabberd extauth):
//! the two wire protocols, request validation, and one long-running child
//! process per worker. Each child leads its own process group, and the
//! whole group is killed with it, so nothing a wrapper script started
//! outlives it.
//!
//! It owns the bytes exchanged with a child process. It must not queue or
//! schedule requests (the pool does) nor know about XMPP.

use super::pool::{PoolConfig, PoolHandle, Validator, Worker, WorkerFactory, WorkerFailure};
use super::{AuthCommand, AuthError};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{
    Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec, LinesCodecError,
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

impl Protocol {
    /// Whether the protocol has `tryregister` and `removeuser`:
    /// mod_auth_external's generic protocol has only `auth`, `isuser` and
    /// `setpass`.
    pub fn manages_accounts(self) -> bool {
        self == Protocol::Ejabberd
    }

    /// Whether the protocol has `command` at all.
    fn has(self, command: &AuthCommand) -> bool {
        match command {
            AuthCommand::Auth { .. } | AuthCommand::IsUser { .. } | AuthCommand::SetPass { .. } => {
                true
            }
            AuthCommand::TryRegister { .. } | AuthCommand::RemoveUser { .. } => {
                self.manages_accounts()
            }
        }
    }

    /// The longest request this protocol carries (without a line's `\n`).
    fn max_request(self) -> usize {
        match self {
            Protocol::Generic => MAX_GENERIC_REQUEST,
            Protocol::Ejabberd => MAX_EJABBERD_REQUEST,
        }
    }
}

/// Settings of an external-process pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalConfig {
    /// The program and its arguments; `command[0]` is the program.
    pub command: Vec<String>,
    /// How requests and replies are framed on the program's pipes.
    pub protocol: Protocol,
    /// Processes in the pool, each with one request in flight (>= 1).
    pub processes: usize,
    /// Requests that may wait for a free process.
    pub queue: usize,
    /// How long a process may take to answer before it is killed.
    pub timeout: Duration,
    /// How long a request may wait in the queue.
    pub queue_timeout: Duration,
    /// How long a process's output must stay quiet after an answer before
    /// the answer is trusted (see `ExternalProcess::confirm`); zero
    /// trusts every answer at once.
    pub reply_grace: Duration,
}

impl ExternalConfig {
    fn pool(&self) -> PoolConfig {
        PoolConfig {
            backend: "external",
            workers: self.processes,
            queue: self.queue,
            timeout: self.timeout,
            queue_timeout: self.queue_timeout,
        }
    }

    /// What starts this config's processes.
    fn workers(&self) -> ExternalBackend {
        ExternalBackend {
            command: self.command.clone(),
            protocol: self.protocol,
            reply_grace: self.reply_grace,
        }
    }

    fn validator(&self) -> Validator {
        let protocol = self.protocol;
        Arc::new(move |command| request_line(command, protocol).map(drop))
    }
}

impl PoolHandle {
    /// Starts a pool of external auth processes. Must be called inside a
    /// running actix System.
    pub fn start_external(config: ExternalConfig) -> PoolHandle {
        PoolHandle::start(config.pool(), config.workers(), config.validator())
    }

    /// Makes a running external pool (started on `old`) run on `new`: a
    /// new `command`, `protocol` or `reply_grace` replaces every process,
    /// one at a time (see [`PoolHandle::replace_workers`]); then its size,
    /// queue and timeouts change (see [`PoolHandle::tune`]). When the
    /// first new process cannot start, nothing changed and the error says
    /// why.
    pub async fn reconfigure_external(
        &self,
        old: &ExternalConfig,
        new: &ExternalConfig,
    ) -> Result<(), String> {
        let program = |c: &ExternalConfig| (c.command.clone(), c.protocol, c.reply_grace);
        if program(old) != program(new) {
            self.replace_workers(new.workers(), new.validator()).await?;
        }
        self.tune(&new.pool()).await;
        Ok(())
    }
}

/// The request text `cmd:user:host[:pass]`, or why it cannot be sent:
/// `NotSupported` for a command the protocol lacks; `InvalidRequest` for a
/// NUL, CR or LF anywhere, a `:` in the user or host (they are delimited by
/// it; only the password, which comes last, may hold one), or a request too
/// long for the protocol.
pub(crate) fn request_line(command: &AuthCommand, protocol: Protocol) -> Result<String, AuthError> {
    if !protocol.has(command) {
        return Err(AuthError::NotSupported);
    }
    let (user, host, password) = command.parts();
    if user.contains(':') || host.contains(':') {
        return Err(AuthError::InvalidRequest("user or host contains ':'"));
    }
    let mut line = format!("{}:{user}:{host}", command.name());
    if let Some(password) = password {
        line.push(':');
        line.push_str(password.expose());
    }
    if line.bytes().any(|b| matches!(b, b'\0' | b'\r' | b'\n')) {
        return Err(AuthError::InvalidRequest("NUL, CR or LF in the request"));
    }
    if line.len() > protocol.max_request() {
        return Err(AuthError::InvalidRequest(
            "request too long for the protocol",
        ));
    }
    Ok(line)
}

/// Starts auth processes.
pub(crate) struct ExternalBackend {
    /// The program and its arguments, spawned once per (re)start.
    command: Vec<String>,
    /// The framing each new process speaks.
    protocol: Protocol,
    /// How long each new process must stay quiet after an answer.
    reply_grace: Duration,
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
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let group = ProcessGroup {
            id: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
        };
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(ExternalProcess {
            group,
            child,
            protocol: self.protocol,
            reply_grace: self.reply_grace,
            requests: FramedWrite::new(stdin, Wire::requests(self.protocol)),
            replies: FramedRead::new(stdout, Wire::replies(self.protocol)),
        })
    }

    fn describe(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }
}

/// What a process said when nobody asked.
const UNSOLICITED: &str = "the process wrote output without being asked";
/// What a process said right after an answer.
const MORE_THAN_ONE_ANSWER: &str = "the process wrote more output right after its answer";

/// The process group an auth process leads: it and whatever it started
/// (a wrapper script's real program). Killed on stop, and on drop, so
/// nothing outlives a pool that was dropped without a shutdown
/// (`kill_on_drop` reaches the direct child only).
struct ProcessGroup {
    /// The group's id, the leader's pid; `None` once killed.
    id: Option<libc::pid_t>,
}

impl ProcessGroup {
    /// Sends SIGKILL to every process in the group, once. Linux does not
    /// reuse a group's id while any member is alive, so even after the
    /// leader was reaped (an exit noticed while idle) the signal reaches
    /// exactly the group's survivors.
    fn kill(&mut self) {
        if let Some(id) = self.id.take() {
            // SAFETY: killpg only sends a signal; it touches no memory.
            unsafe { libc::killpg(id, libc::SIGKILL) };
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One running auth process.
pub(crate) struct ExternalProcess {
    /// The process's group: killed on stop and on drop.
    group: ProcessGroup,
    /// Killed (and reaped) on stop; killed on drop as a last resort.
    child: Child,
    /// Checked again before writing, so nothing unsendable is ever written.
    protocol: Protocol,
    /// How long the output must stay quiet after an answer before it is
    /// trusted: these protocols carry no request id, so an answer is only
    /// known to be this request's if nothing follows it.
    reply_grace: Duration,
    /// The process's stdin, framing requests.
    requests: FramedWrite<ChildStdin, Wire>,
    /// The process's stdout, decoding replies.
    replies: FramedRead<ChildStdout, Wire>,
}

impl Worker for ExternalProcess {
    const REPLACE_AFTER_TIMEOUT: bool = true;

    async fn serve(&mut self, command: &AuthCommand) -> Result<bool, WorkerFailure> {
        // Validated before admission; checked again so nothing unsendable
        // can ever be written.
        let line = request_line(command, self.protocol).map_err(WorkerFailure::Failed)?;
        // Output nobody asked for, read or still in the pipe, would be
        // taken as (part of) this request's reply: the process is condemned
        // before anything is written, and the request can go elsewhere.
        if self.has_unread_output() {
            return Err(WorkerFailure::Unsent(UNSOLICITED.into()));
        }
        self.requests.send(line).await.map_err(|e| {
            WorkerFailure::Broken(format!("cannot write to the process: {}", e.kind()))
        })?;
        let answer = match self.replies.next().await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => return Err(WorkerFailure::Broken(e.to_string())),
            None => {
                return Err(WorkerFailure::Broken(
                    "the process closed its output (exited?)".into(),
                ))
            }
        };
        self.confirm(answer).await
    }

    async fn broken(&mut self) -> String {
        if self.has_unread_output() {
            return UNSOLICITED.into();
        }
        // While idle, any byte at all is unsolicited: read the pipe itself
        // rather than wait for a whole reply.
        let mut byte = [0; 1];
        tokio::select! {
            exited = self.child.wait() => match exited {
                Ok(status) => format!("the process exited ({status})"),
                Err(e) => format!("cannot wait for the process: {}", e.kind()),
            },
            read = self.replies.get_mut().read(&mut byte) => match read {
                Ok(0) => "the process closed its output (exited?)".into(),
                Ok(_) => UNSOLICITED.into(),
                Err(e) => format!("cannot read from the process: {}", e.kind()),
            },
        }
    }

    async fn stop(mut self) {
        self.group.kill();
        // The leader may have left its group.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl ExternalProcess {
    /// Whether the process wrote anything not yet taken as an answer:
    /// bytes the codec has read, or bytes still waiting in the pipe (which
    /// the async reader has not been woken for yet).
    fn has_unread_output(&self) -> bool {
        !self.replies.read_buffer().is_empty() || pipe_holds_bytes(self.replies.get_ref())
    }

    /// Trusts `answer` only once the process's output has stayed quiet for
    /// `reply_grace`. A program that writes a stray line (a second answer,
    /// a debug print) and then reads the next request puts the stray in
    /// front of that request's real answer, which follows within moments:
    /// so an answer followed by more output is not this request's, the
    /// request fails as a temporary error and the process is replaced. A
    /// process that closes its output after answering has said nothing
    /// more; the idle watcher replaces it.
    async fn confirm(&mut self, answer: bool) -> Result<bool, WorkerFailure> {
        if self.has_unread_output() {
            return Err(WorkerFailure::Broken(MORE_THAN_ONE_ANSWER.into()));
        }
        if self.reply_grace.is_zero() {
            return Ok(answer);
        }
        let mut byte = [0; 1];
        let more = self.replies.get_mut().read(&mut byte);
        match tokio::time::timeout(self.reply_grace, more).await {
            // Quiet for the whole window, or closed: nothing followed.
            Err(_) | Ok(Ok(0)) => Ok(answer),
            Ok(Ok(_)) => Err(WorkerFailure::Broken(MORE_THAN_ONE_ANSWER.into())),
            Ok(Err(e)) => Err(WorkerFailure::Broken(format!(
                "cannot read from the process: {}",
                e.kind()
            ))),
        }
    }
}

/// Whether bytes wait unread in the pipe behind `stdout`, asked of the
/// kernel (`FIONREAD`) rather than of the async reader, whose readiness
/// lags until the reactor's next poll. An error counts as bytes: a pipe
/// that cannot be asked is not trusted.
fn pipe_holds_bytes(stdout: &ChildStdout) -> bool {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a live local; the descriptor is owned by `stdout` and open.
    let status = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::FIONREAD, &mut pending) };
    status != 0 || pending > 0
}

/// Why a reply was not a valid answer. The text never holds what the
/// process wrote.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplyError {
    #[error("invalid reply (not a \"1\" or \"0\" answer)")]
    Garbage,
    #[error("cannot read from the process: {0}")]
    Io(#[from] std::io::Error),
}

/// The framing on a process's pipes: lines (generic; `LinesCodec` appends
/// the `\n` and strips a `\r`) or u16 big-endian length prefixes
/// (ejabberd). One value frames one direction: it encodes requests or
/// decodes replies, with that direction's length limit.
pub(crate) enum Wire {
    Lines(LinesCodec),
    Frames(LengthDelimitedCodec),
}

impl Wire {
    fn new(protocol: Protocol, max_length: usize) -> Self {
        match protocol {
            Protocol::Generic => Wire::Lines(LinesCodec::new_with_max_length(max_length)),
            Protocol::Ejabberd => Wire::Frames(
                LengthDelimitedCodec::builder()
                    .length_field_length(2)
                    .big_endian()
                    .max_frame_length(max_length)
                    .new_codec(),
            ),
        }
    }

    /// Writes requests, up to the protocol's request limit.
    pub(crate) fn requests(protocol: Protocol) -> Self {
        Wire::new(protocol, protocol.max_request())
    }

    /// Reads replies: a short line, or a 2-byte frame; anything longer is
    /// refused by the codec without reading it all.
    pub(crate) fn replies(protocol: Protocol) -> Self {
        let max_length = match protocol {
            Protocol::Generic => MAX_REPLY_LINE,
            Protocol::Ejabberd => 2,
        };
        Wire::new(protocol, max_length)
    }
}

impl Encoder<String> for Wire {
    type Error = std::io::Error;

    fn encode(&mut self, line: String, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match self {
            Wire::Lines(codec) => codec.encode(line, dst).map_err(std::io::Error::other),
            Wire::Frames(codec) => codec.encode(Bytes::from(line), dst),
        }
    }
}

impl Decoder for Wire {
    type Item = bool;
    type Error = ReplyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<bool>, ReplyError> {
        // Both codecs report an over-long or undecodable reply as
        // `InvalidData`; a pipe never fails that way.
        let garbage_or_io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::InvalidData => ReplyError::Garbage,
            _ => ReplyError::Io(e),
        };
        let answer = match self {
            Wire::Lines(codec) => match codec.decode(src) {
                Ok(line) => line.map(|line| match line.as_str() {
                    "1" => Ok(true),
                    "0" => Ok(false),
                    _ => Err(ReplyError::Garbage),
                }),
                Err(LinesCodecError::Io(e)) => return Err(garbage_or_io(e)),
                Err(LinesCodecError::MaxLineLengthExceeded) => return Err(ReplyError::Garbage),
            },
            Wire::Frames(codec) => match codec.decode(src) {
                Ok(frame) => frame.map(|frame| match frame[..] {
                    [0, 1] => Ok(true),
                    [0, 0] => Ok(false),
                    _ => Err(ReplyError::Garbage),
                }),
                Err(e) => return Err(garbage_or_io(e)),
            },
        };
        answer.transpose()
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
        let register = AuthCommand::TryRegister {
            user: "bob".into(),
            host: "h".into(),
            password: Password::new("x"),
        };
        assert_eq!(
            request_line(&register, Protocol::Ejabberd).unwrap(),
            "tryregister:bob:h:x"
        );
        // mod_auth_external's protocol has neither.
        assert_eq!(request_line(&remove, g), Err(AuthError::NotSupported));
        assert_eq!(request_line(&register, g), Err(AuthError::NotSupported));
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
        assert!(request_line(&auth("alice", "h", "x"), g).is_ok());
        // `auth:alice:h:` is 13 bytes: the limits are on the whole line.
        let fits = "x".repeat(MAX_GENERIC_REQUEST - 13);
        assert_eq!(
            request_line(&auth("alice", "h", &fits), g).unwrap().len(),
            MAX_GENERIC_REQUEST
        );
        let long = "x".repeat(MAX_GENERIC_REQUEST - 12);
        assert!(request_line(&auth("alice", "h", &long), g).is_err());
        assert!(request_line(&auth("alice", "h", &long), Protocol::Ejabberd).is_ok());
        let fits = "x".repeat(MAX_EJABBERD_REQUEST - 13);
        assert!(request_line(&auth("alice", "h", &fits), Protocol::Ejabberd).is_ok());
        let longer = "x".repeat(MAX_EJABBERD_REQUEST - 12);
        assert!(request_line(&auth("alice", "h", &longer), Protocol::Ejabberd).is_err());
    }

    #[test]
    fn request_framing() {
        let mut out = BytesMut::new();
        Wire::requests(Protocol::Generic)
            .encode("auth:a:b:c".into(), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"auth:a:b:c\n");
        let mut out = BytesMut::new();
        Wire::requests(Protocol::Ejabberd)
            .encode("isuser:a:b".into(), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\x00\x0aisuser:a:b");
        let mut out = BytesMut::new();
        let long = format!("auth:a:b:{}", "p".repeat(300));
        Wire::requests(Protocol::Ejabberd)
            .encode(long.clone(), &mut out)
            .unwrap();
        assert_eq!(&out[..2], &[0x01, 0x35]);
        assert_eq!(&out[2..], long.as_bytes());
    }

    #[tokio::test]
    async fn bytes_waiting_in_the_pipe_are_seen_before_anything_reads_them() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 0.3; printf 1; sleep 5"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        assert!(!pipe_holds_bytes(&stdout), "nothing written yet");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pipe_holds_bytes(&stdout) {
            assert!(
                std::time::Instant::now() < deadline,
                "the byte never showed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn decode_all(protocol: Protocol, input: &[u8]) -> Vec<Result<bool, String>> {
        let mut codec = Wire::replies(protocol);
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
        assert!(decode_all(Protocol::Generic, b"\n")[0].is_err());
        assert!(decode_all(Protocol::Generic, b" 1\n")[0].is_err());
        assert!(decode_all(Protocol::Generic, b"1\r\r\n")[0].is_err());
        assert_eq!(
            decode_all(Protocol::Generic, b"\xff\n"),
            vec![Err(ReplyError::Garbage.to_string())],
            "not UTF-8"
        );
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
        assert!(decode_all(Protocol::Ejabberd, b"\x00\x00")[0].is_err());
        assert_eq!(
            decode_all(Protocol::Ejabberd, b"\x00\x02\x00"),
            vec![Err(ReplyError::Garbage.to_string())],
            "a partial frame at EOF"
        );
        assert_eq!(decode_all(Protocol::Ejabberd, b""), vec![], "a clean EOF");
    }
}
