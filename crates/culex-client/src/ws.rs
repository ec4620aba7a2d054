//! MQTT over WebSocket: a WebSocket connection read and written as the byte stream the codec
//! runs over. One implementation for both ends: the client's transport and the broker's
//! WebSocket listeners (which depend on this crate) wrap their upgraded connections in
//! [`WsByteStream`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Where [`WsByteStream`] reading is.
#[derive(Debug)]
enum ReadState {
    /// Reading messages.
    Open,
    /// A text frame arrived: a Close (protocol error) is being sent.
    SendClose,
    /// The Close is sent; flushing it.
    FlushClose,
    /// The peer closed (or we did): reads return end of file.
    Eof,
    /// The connection failed; reads return this error kind.
    Failed(io::ErrorKind),
}

/// MQTT bytes over a WebSocket: binary messages in, binary messages out.
///
/// Reads return the bytes of the binary messages in order, regardless of how MQTT packets fall
/// across messages: a packet may span several, a message may hold several [MQTT-6.0.0-2]. Each
/// `poll_write` sends (and flushes) one binary message. Pings are answered by tungstenite; a
/// Close ends the stream (end of file); a text message is a protocol error [MQTT-6.0.0-1]: a
/// Close with code 1002 is sent and the read fails.
pub struct WsByteStream<S> {
    inner: WebSocketStream<S>,
    /// The rest of the current binary message.
    pending: Bytes,
    state: ReadState,
    /// Length of a message queued by `poll_write` whose flush has not completed.
    flushing: Option<usize>,
}

impl<S> fmt::Debug for WsByteStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsByteStream")
            .field("pending", &self.pending.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S> WsByteStream<S> {
    /// Wraps a connection whose WebSocket handshake is done (either side's).
    pub fn new(inner: WebSocketStream<S>) -> WsByteStream<S> {
        WsByteStream {
            inner,
            pending: Bytes::new(),
            state: ReadState::Open,
            flushing: None,
        }
    }
}

fn ws_to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.state {
                ReadState::Open => {}
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(kind, "WebSocket connection failed")))
                }
                ReadState::SendClose => {
                    let mut inner = Pin::new(&mut this.inner);
                    match ready!(inner.as_mut().poll_ready(cx)) {
                        Ok(()) => {
                            let frame = CloseFrame {
                                code: CloseCode::Protocol,
                                reason: "MQTT over WebSocket uses binary messages only".into(),
                            };
                            this.state = match inner.start_send(Message::Close(Some(frame))) {
                                Ok(()) => ReadState::FlushClose,
                                Err(_) => ReadState::Failed(io::ErrorKind::InvalidData),
                            };
                        }
                        Err(_) => this.state = ReadState::Failed(io::ErrorKind::InvalidData),
                    }
                    continue;
                }
                ReadState::FlushClose => {
                    // Whether or not the Close made it out, the connection is over.
                    let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
                    this.state = ReadState::Failed(io::ErrorKind::InvalidData);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT over WebSocket uses binary messages only",
                    )));
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => this.state = ReadState::Eof,
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // tungstenite answers the Close itself.
                Some(Ok(Message::Close(_))) => this.state = ReadState::Eof,
                Some(Ok(Message::Text(_))) => this.state = ReadState::SendClose,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.state = ReadState::Eof;
                }
                Some(Err(e)) => {
                    let e = ws_to_io(e);
                    this.state = ReadState::Failed(e.kind());
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A message sent by an earlier call that returned Pending while flushing: the caller
        // retries with the same bytes (as `write_all` does); report them once they are out.
        if let Some(n) = this.flushing {
            ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(ws_to_io)?;
            this.flushing = None;
            return Poll::Ready(Ok(n));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut inner = Pin::new(&mut this.inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(ws_to_io)?;
        inner
            .as_mut()
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_to_io)?;
        // tungstenite only buffers a message: flush it now, since callers (the broker's
        // connection task among them) write each batch once and do not call flush.
        match inner.poll_flush(cx) {
            Poll::Ready(r) => {
                r.map_err(ws_to_io)?;
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Pending => {
                this.flushing = Some(buf.len());
                Poll::Pending
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Both ends of a WebSocket over an in-memory pipe (no handshake: the roles are set).
    async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(64 * 1024);
        let client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (client, server)
    }

    /// `f`'s output, failing instead of hanging when an adapter loses bytes.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(5), f)
            .await
            .expect("done within 5 s")
    }

    /// The next message the peer receives.
    async fn next_message(ws: &mut WebSocketStream<DuplexStream>) -> Message {
        within(ws.next()).await.expect("open").expect("valid")
    }

    #[tokio::test]
    async fn reads_concatenate_binary_messages_whatever_the_split() {
        let (client, mut server) = pair().await;
        let mut bytes = WsByteStream::new(client);
        // A packet across two messages, then two packets in one, with a ping between.
        server
            .send(Message::binary(vec![0x30, 0x03]))
            .await
            .unwrap();
        server.send(Message::Ping(Bytes::new())).await.unwrap();
        server
            .send(Message::binary(vec![0x00, 0x01, b'a', 0xc0, 0x00]))
            .await
            .unwrap();
        let mut got = [0u8; 7];
        bytes.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x30, 0x03, 0x00, 0x01, b'a', 0xc0, 0x00]);
        // A small read buffer takes a message in pieces.
        server.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        let mut one = [0u8; 1];
        for want in [1, 2, 3] {
            assert_eq!(bytes.read(&mut one).await.unwrap(), 1);
            assert_eq!(one[0], want);
        }
    }

    #[tokio::test]
    async fn each_write_is_one_binary_message_sent_at_once() {
        let (client, mut server) = pair().await;
        let mut bytes = WsByteStream::new(client);
        // No flush: a write alone puts the message on the wire.
        bytes.write_all(&[0xc0, 0x00]).await.unwrap();
        bytes.write_all(&[0xe0, 0x00]).await.unwrap();
        assert_eq!(
            next_message(&mut server).await,
            Message::binary(vec![0xc0, 0x00])
        );
        assert_eq!(
            next_message(&mut server).await,
            Message::binary(vec![0xe0, 0x00])
        );
        assert_eq!(bytes.write(&[]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_close_is_end_of_file() {
        let (client, mut server) = pair().await;
        let mut bytes = WsByteStream::new(client);
        server.send(Message::binary(vec![9])).await.unwrap();
        server.close(None).await.unwrap();
        let mut all = Vec::new();
        bytes.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [9]);
        assert_eq!(bytes.read(&mut [0u8; 4]).await.unwrap(), 0, "stays at EOF");
        bytes.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_text_message_is_refused_with_close_1002() {
        let (client, mut server) = pair().await;
        let mut bytes = WsByteStream::new(client);
        server.send(Message::text("hello")).await.unwrap();
        let e = bytes.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("binary messages only"), "{e}");
        match next_message(&mut server).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Protocol),
            other => panic!("expected a Close, got {other:?}"),
        }
        // Later reads fail too.
        let again = bytes.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn the_server_side_reads_what_a_client_writes() {
        let (client, server) = pair().await;
        let (mut c, mut s) = (WsByteStream::new(client), WsByteStream::new(server));
        c.write_all(b"\x10\x00").await.unwrap();
        let mut got = [0u8; 2];
        within(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"\x10\x00");
        s.write_all(b"\x20\x02\x00\x00").await.unwrap();
        let mut got = [0u8; 4];
        within(c.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"\x20\x02\x00\x00");
    }
}
