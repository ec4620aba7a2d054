//! The socket side of one connection: read and decode, hand each packet and outbox item to
//! [`ConnState`], send the commands it produced to the router, write what it encoded, keep
//! the keepalive timer, and close.
//!
//! Reads use `read_buf` (cancel-safe, so they sit in a `select!` beside the outbox and the
//! timer); everything ready is written in one `write_all` per wake-up.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use culex_broker::log_clip::Clipped;
use culex_broker::{Command, OutboxReceiver};
use culex_proto::{decode, peek_header, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::info;

use super::state::{ConnState, Ending, Output};

/// Outbox items encoded per wake-up at most, so one busy subscriber cannot starve its reads.
const MAX_BATCH: usize = 256;
/// Flush the write buffer once it holds this many bytes.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) what the client still sends
/// after the server's DISCONNECT and shutdown. Closing a socket with unread data makes the
/// kernel answer with RST, and a client that gets RST while writing (BrokenPipe) often never
/// reads the DISCONNECT that explains why.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// At most this many reads of what a taken-over connection's socket still holds.
const LAST_INPUT_READS: usize = 16;
/// Bytes read at a time into an empty read buffer (through the stack, see [`poll_read_lazy`]),
/// and the room kept for the next read while a packet is incomplete.
const READ_CHUNK: usize = 8192;
/// A connection that has had nothing to read or write for this long frees its (empty) read
/// and write buffers. Busy connections keep theirs, so a burst does not allocate per write.
const BUFFER_IDLE: Duration = Duration::from_secs(1);

/// Reads from `io` into `buf`. With no room in `buf` (an idle connection holds no buffer),
/// the read goes to a buffer on the stack, and only what arrived is copied into a newly
/// allocated `buf`: waiting for input costs no heap memory.
fn poll_read_lazy<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() > buf.len() {
        // `read_buf` keeps no state between polls (it is cancel-safe), so a fresh one per
        // poll is fine.
        return std::pin::pin!(io.read_buf(buf)).poll(cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let got = read.filled();
    buf.reserve(READ_CHUNK.max(got.len()));
    buf.extend_from_slice(got);
    Poll::Ready(Ok(got.len()))
}

/// One connection: its stream, read buffer, protocol state and pending output.
pub(super) struct Conn<S> {
    /// The client's stream, read and written from this task only (never at the same time).
    pub(super) io: S,
    pub(super) rbuf: BytesMut,
    pub(super) out: Output,
    pub(super) state: ConnState,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Sends the commands the state produced, in order, as far as the router's channel takes
    /// them now (the common case, without an await). Returns false when it is full and some
    /// wait: then [`Conn::send_commands`].
    fn try_send_commands(&mut self) -> Result<bool, Ending> {
        while let Some(cmd) = self.out.commands.pop_front() {
            match self.state.shared.router.try_send(cmd) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    self.out.commands.push_front(cmd);
                    return Ok(false);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Ending::router_gone()),
            }
        }
        Ok(true)
    }

    /// Sends the commands the state produced, in order. While the router's channel is full,
    /// waits for room (backpressure on a busy router); only a permit is awaited, so the
    /// waiting state holds no command.
    async fn send_commands(&mut self) -> Result<(), Ending> {
        loop {
            // The command is moved into the channel or back into the queue before any await,
            // so the waiting state holds none.
            let full = match self.out.commands.pop_front() {
                None => return Ok(()),
                Some(cmd) => match self.state.shared.router.try_send(cmd) {
                    Ok(()) => false,
                    Err(mpsc::error::TrySendError::Full(cmd)) => {
                        self.out.commands.push_front(cmd);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(Ending::router_gone()),
                },
            };
            if full {
                let permit = self
                    .state
                    .shared
                    .router
                    .reserve()
                    .await
                    .map_err(|_| Ending::router_gone())?;
                if let Some(cmd) = self.out.commands.pop_front() {
                    permit.send(cmd);
                }
            }
        }
    }

    /// The connected loop. Returns how the connection ended.
    pub(super) async fn run(&mut self, outbox: &mut OutboxReceiver) -> Ending {
        let max = self.state.shared.limits.max_packet_size;
        let keepalive = Duration::from_secs(u64::from(self.state.keep_alive)).mul_f32(1.5);
        let mut deadline = Instant::now() + keepalive;
        // True while the connection holds the client's input back (see below).
        let mut held_back = false;
        loop {
            // Handle every complete packet already buffered. Packets are handled without
            // awaiting (so no packet-sized value is part of this future's waiting state); the
            // commands they produce are sent after each, waiting while the router is full.
            // The keepalive deadline moves once per batch of packets, not per packet: reading
            // the clock for each PUBACK of a burst costs more than the rest of its handling.
            let mut received = false;
            loop {
                let end = match decode(&mut self.rbuf, Some(self.state.protocol), max) {
                    Ok(Some(packet)) => {
                        received = true;
                        self.state.on_packet(packet, &mut self.out)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.state.shared.counters.protocol_errors.inc();
                        return Ending::abnormal(Some(e.reason_code()), e.to_string());
                    }
                };
                // Bound first: a match on the call would keep its result across the await.
                let all_sent = match self.try_send_commands() {
                    Ok(all) => all,
                    Err(end) => return end,
                };
                if !all_sent {
                    if let Err(end) = self.send_commands().await {
                        return end;
                    }
                }
                if let Some(end) = end {
                    return end;
                }
            }
            // The outbox branch below may have left a command (OutboxSpace).
            let all_sent = match self.try_send_commands() {
                Ok(all) => all,
                Err(end) => return end,
            };
            if !all_sent {
                if let Err(end) = self.send_commands().await {
                    return end;
                }
            }
            if !self.out.wbuf.is_empty() {
                if let Err(why) = self.flush().await {
                    return Ending::socket_gone(why);
                }
            }
            let reading = self.state.reading();
            // A packet larger than the buffer gets room for exactly the rest of it: grown
            // chunk by chunk (doubling), the buffer would end up to twice the packet's size,
            // and a queued payload keeps its whole buffer alive (`max_queued_bytes` counts
            // payloads, so the memory it bounds would be up to twice the figure).
            if let Ok(Some(h)) = peek_header(&self.rbuf, max) {
                let total = usize::try_from(h.packet_len()).unwrap_or(usize::MAX);
                if total > self.rbuf.capacity() {
                    self.rbuf.reserve(total - self.rbuf.len());
                }
            }
            // A released read buffer stays released until data arrives (`poll_read_lazy`).
            if self.rbuf.capacity() != 0 && self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            // While so many answers are owed that the connection stops reading, what the
            // client sends, its PINGREQs too, waits unread in the socket: the keepalive is
            // not counted then, and starts afresh when reading resumes.
            let resumed = reading && held_back;
            held_back = !reading;
            let keepalive_on = reading && !keepalive.is_zero();
            // One timer for both the keepalive and, while buffers are held, their release
            // once the connection has been quiet for `BUFFER_IDLE`.
            let holds = self.holds_buffers();
            let now = (received || resumed || holds).then(Instant::now);
            if let (true, Some(now)) = (received || resumed, now) {
                deadline = now + keepalive;
            }
            let release_at = now.filter(|_| holds).map(|now| now + BUFFER_IDLE);
            let timer = match (release_at, keepalive_on) {
                (Some(at), false) => Some(at),
                (Some(at), true) => Some(at.min(deadline)),
                (None, false) => None,
                (None, true) => Some(deadline),
            };
            tokio::select! {
                biased;
                item = outbox.recv() => {
                    let Some(item) = item else {
                        return Ending::abnormal(None, "router gone");
                    };
                    if let Some(end) = self.state.on_outbound(item, &mut self.out) {
                        return end;
                    }
                    let mut n = 1;
                    while n < MAX_BATCH && self.out.wbuf.len() < FLUSH_BYTES {
                        let Ok(item) = outbox.try_recv() else { break };
                        n += 1;
                        if let Some(end) = self.state.on_outbound(item, &mut self.out) {
                            return end;
                        }
                    }
                    if outbox.space_wanted() {
                        self.out.commands.push_back(Command::OutboxSpace { conn: self.state.conn });
                    }
                }
                r = poll_fn(|cx| poll_read_lazy(&mut self.io, &mut self.rbuf, cx)), if reading => {
                    match r {
                        Ok(0) => return Ending::socket_gone("connection closed by client"),
                        Err(e) => return Ending::socket_gone(format!("read error: {e}")),
                        Ok(n) => self.state.shared.counters.bytes_received.add(n as u64),
                    }
                }
                _ = sleep_until(timer.unwrap_or(deadline)), if timer.is_some() => {
                    if keepalive_on && Instant::now() >= deadline {
                        return Ending::abnormal(Some(ReasonCode::KeepAliveTimeout), "keepalive timeout");
                    }
                    self.release_buffers();
                    // A burst also grew the outbox; it is drained by now (it was polled first).
                    outbox.shrink();
                }
            }
        }
    }

    /// The router closes this connection because a newer one takes its session over. What
    /// this client sent before that still counts, in order: the packets already buffered and
    /// those the socket holds right now are handled first, above all a DISCONNECT, which
    /// decides whether the session and the will survive (the router answers the new
    /// connection only once this one's end is applied). Any other ending is returned as is.
    pub(super) async fn last_input(&mut self, end: Ending) -> Ending {
        if end.send != Some(ReasonCode::SessionTakenOver) {
            return end;
        }
        let max = self.state.shared.limits.max_packet_size;
        for _ in 0..LAST_INPUT_READS {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            // Only what is there now: a zero timeout polls the read once.
            match timeout(Duration::ZERO, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => self.state.shared.counters.bytes_received.add(n as u64),
                _ => break,
            }
        }
        while let Ok(Some(packet)) = decode(&mut self.rbuf, Some(self.state.protocol), max) {
            let ended = self.state.on_packet(packet, &mut self.out);
            if self.send_commands().await.is_err() {
                break;
            }
            if let Some(client_end) = ended {
                // The client ended the connection itself (DISCONNECT, or a protocol error).
                return client_end;
            }
        }
        end
    }

    /// True while the connection holds a buffer it could give back.
    fn holds_buffers(&self) -> bool {
        (self.out.wbuf.is_empty() && self.out.wbuf.capacity() != 0)
            || (self.rbuf.is_empty() && self.rbuf.capacity() != 0)
            || (self.out.commands.is_empty() && self.out.commands.capacity() != 0)
    }

    /// Frees the read and write buffers if they hold nothing: a quiet connection keeps no
    /// buffer; the next read goes through the stack and the next write allocates anew.
    pub(super) fn release_buffers(&mut self) {
        if self.out.wbuf.is_empty() {
            self.out.wbuf = BytesMut::new();
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.out.commands.is_empty() {
            self.out.commands = Default::default();
        }
    }

    /// Writes the buffered packets in one go, bounded in time so a client that stopped
    /// reading cannot pin the task forever.
    pub(super) async fn flush(&mut self) -> Result<(), &'static str> {
        let limit = self.state.shared.limits.write_timeout;
        // Split: once written and dropped, the allocation is the write buffer's alone again
        // and is reused; `run` releases it when the connection goes quiet.
        let buf = self.out.wbuf.split();
        match timeout(limit, self.io.write_all(&buf)).await {
            Ok(Ok(())) => {
                self.state.shared.counters.bytes_sent.add(buf.len() as u64);
                Ok(())
            }
            Ok(Err(_)) => Err("write failed"),
            Err(_) => Err("client stopped reading: no write progress for slow_client_timeout"),
        }
    }

    /// Ends the connection: DISCONNECT (MQTT 5) if there is a reason, shut the write side down,
    /// tell the router (after any command still pending), then (unless the socket is gone)
    /// read and discard until the client closes or [`CLOSE_LINGER`] passes, and close.
    pub(super) async fn finish(&mut self, ending: Ending) {
        let shared = std::sync::Arc::clone(&self.state.shared);
        if shared.limits.connection_messages {
            info!(peer = %self.state.peer, client_id = %Clipped(&self.state.client_id), reason = %ending.why, "connection closed");
        }
        self.state.farewell(&ending, &mut self.out);
        if !self.out.wbuf.is_empty() {
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
        shared.counters.connected.dec();
        for cmd in std::mem::take(&mut self.out.commands) {
            if shared.router.send(cmd).await.is_err() {
                break;
            }
        }
        let _ = shared
            .router
            .send(Command::Disconnect {
                conn: self.state.conn,
                kind: ending.kind,
                session_expiry: ending.session_expiry,
                inbound_qos2: std::mem::take(&mut self.state.inbound_qos2),
            })
            .await;
        if ending.linger {
            self.drain_until_closed().await;
        }
    }

    /// Reads and discards until the client closes its side (or an error), for at most
    /// [`CLOSE_LINGER`].
    async fn drain_until_closed(&mut self) {
        let until = Instant::now() + CLOSE_LINGER;
        loop {
            self.rbuf.clear();
            if self.rbuf.capacity() < READ_CHUNK {
                self.rbuf.reserve(READ_CHUNK);
            }
            match tokio::time::timeout_at(until, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        self.rbuf = BytesMut::new();
    }
}
