//! Persistent sessions follow their client from node to node.
//!
//! Each node records in a replicated key-value bucket (`<cluster>-sessions`) which node holds
//! a client's persistent session: key = SHA-256 of the client identifier, value = node name,
//! written when the client connects. A client that connects with Clean Start 0 to a node
//! that does not hold its session makes that node ask the holder, on the core NATS subject
//! `<cluster>.sessions.<holder>`, to give it up. The holder closes its client's connection
//! (if any), waits for its end, and sends the session's image (subscriptions, queued and
//! in-flight QoS 1/2 messages, inbound QoS 2 packet identifiers) in parts no larger than the
//! servers' `max_payload`, then waits for the receiver to confirm the whole image; without the
//! confirmation it takes the session back. The receiver rebuilds the session and answers the
//! client with session present = 1.
//!
//! When the holder is gone (no NATS responder on its subject), the session cannot be
//! resumed: the client gets a new session (session present = 0, so it knows to subscribe
//! again) and the loss is counted. See docs/cluster.md for what this does and does not keep.
//!
//! ```text
//! part:  kind u8 (0 no session, 1 part, 2 last part) | index u32 | bytes
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::link::Settings;
use crate::stats::ClusterStats;

/// How long a transfer may take, part by part, before it is given up.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for reading or writing the holder's record.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Room left in each part for the NATS headers and the part header.
const PART_OVERHEAD: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Asks this node's broker for the image of a client's session (ending it here); `None` when
/// there is none.
pub type ExportFn = Arc<dyn Fn(String) -> BoxFuture<'static, Option<Vec<u8>>> + Send + Sync>;
/// Gives an image back to this node's broker (a transfer the receiver did not confirm).
pub type RestoreFn = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// Why a session could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The backplane is not reachable: whether another node holds a session is unknown.
    #[error("the cluster backplane is not reachable: {0}")]
    Unavailable(String),
    /// The holder answered but the transfer failed; the session stays with the holder.
    #[error("the session transfer from node {node} failed: {reason}")]
    Transfer {
        /// The holder.
        node: String,
        /// What went wrong.
        reason: String,
    },
}

/// The bucket's name for `cluster`.
pub fn bucket_name(cluster: &str) -> String {
    format!("{cluster}-sessions")
}

/// The subject on which `node` serves requests for its sessions.
pub fn request_subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.sessions.{node}")
}

/// The NATS side of the session directory, once set up.
#[derive(Clone)]
struct Ready {
    client: async_nats::Client,
    bucket: kv::Store,
}

/// This node's view of where sessions live; cheap to clone.
#[derive(Clone)]
pub struct Directory {
    node: Arc<str>,
    cluster: Arc<str>,
    ready: watch::Receiver<Option<Ready>>,
    stats: Arc<ClusterStats>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("node", &self.node)
            .finish()
    }
}

impl Directory {
    fn ready(&self) -> Result<Ready, FetchError> {
        self.ready
            .borrow()
            .clone()
            .ok_or_else(|| FetchError::Unavailable("not connected yet".to_owned()))
    }

    /// The image of `client_id`'s session if another node holds it (that node gives it up);
    /// `Ok(None)` when no other node holds one, or its holder is gone.
    pub async fn fetch(&self, client_id: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let ready = self.ready()?;
        let key = crate::retained::key(client_id);
        let entry = tokio::time::timeout(RECORD_TIMEOUT, ready.bucket.get(&key))
            .await
            .map_err(|_| FetchError::Unavailable("reading the session bucket timed out".into()))?
            .map_err(|e| FetchError::Unavailable(e.to_string()))?;
        let Some(holder) = entry else {
            return Ok(None);
        };
        let holder = String::from_utf8_lossy(&holder).into_owned();
        if *holder == *self.node {
            return Ok(None);
        }
        let transfer = |reason: String| FetchError::Transfer {
            node: holder.clone(),
            reason,
        };
        let inbox = ready.client.new_inbox();
        let mut parts = ready
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| transfer(e.to_string()))?;
        ready
            .client
            .publish_with_reply(
                request_subject(&self.cluster, &holder),
                inbox,
                Bytes::from(client_id.to_owned()),
            )
            .await
            .map_err(|e| transfer(e.to_string()))?;
        let mut image = Vec::new();
        let mut expect = 0u32;
        loop {
            let part = tokio::time::timeout(TRANSFER_TIMEOUT, parts.next())
                .await
                .map_err(|_| transfer("timed out".to_owned()))?
                .ok_or_else(|| transfer("the connection closed".to_owned()))?;
            if part.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                ClusterStats::inc(&self.stats.sessions_lost);
                tracing::warn!(node = %self.node, holder = %holder, client_id = %clip(client_id),
                    "the node that held this client's session is gone: the client starts a new session");
                return Ok(None);
            }
            let (kind, index, bytes) =
                parse_part(&part.payload).ok_or_else(|| transfer("a malformed part".to_owned()))?;
            if kind == PartKind::None {
                return Ok(None);
            }
            if index != expect {
                return Err(transfer(format!("part {index} arrived, {expect} expected")));
            }
            expect += 1;
            image.extend_from_slice(bytes);
            if kind == PartKind::Last {
                let Some(confirm) = part.reply else {
                    return Err(transfer("no confirmation subject".to_owned()));
                };
                ready
                    .client
                    .publish(confirm, Bytes::from_static(b"ok"))
                    .await
                    .map_err(|e| transfer(e.to_string()))?;
                let _ = ready.client.flush().await;
                ClusterStats::inc(&self.stats.sessions_in);
                return Ok(Some(image));
            }
        }
    }

    /// Records that this node holds `client_id`'s session.
    pub async fn hold(&self, client_id: &str) -> Result<(), String> {
        let ready = self.ready().map_err(|e| e.to_string())?;
        let key = crate::retained::key(client_id);
        tokio::time::timeout(
            RECORD_TIMEOUT,
            ready.bucket.put(&key, Bytes::from(self.node.to_string())),
        )
        .await
        .map_err(|_| "writing the session bucket timed out".to_owned())?
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    None,
    More,
    Last,
}

fn part(kind: PartKind, index: u32, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + bytes.len());
    out.put_u8(match kind {
        PartKind::None => 0,
        PartKind::More => 1,
        PartKind::Last => 2,
    });
    out.put_u32(index);
    out.put_slice(bytes);
    out.freeze()
}

fn parse_part(payload: &[u8]) -> Option<(PartKind, u32, &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let (index, bytes) = rest.split_at_checked(4)?;
    let index = u32::from_be_bytes(index.try_into().ok()?);
    let kind = match kind {
        0 => PartKind::None,
        1 => PartKind::More,
        2 => PartKind::Last,
        _ => return None,
    };
    Some((kind, index, bytes))
}

fn clip(s: &str) -> &str {
    s.get(..s.len().min(128)).unwrap_or(s)
}

/// Starts the directory: connects to NATS (retrying), opens the bucket and serves other
/// nodes' requests for this node's sessions until `shutdown`.
pub fn spawn(
    settings: Settings,
    export: ExportFn,
    restore: RestoreFn,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
) -> (Directory, tokio::task::JoinHandle<()>) {
    let (ready_tx, ready_rx) = watch::channel(None);
    let directory = Directory {
        node: Arc::from(settings.node.as_str()),
        cluster: Arc::from(settings.cluster.as_str()),
        ready: ready_rx,
        stats: Arc::clone(&stats),
    };
    let task = tokio::spawn(serve(settings, export, restore, stats, ready_tx, shutdown));
    (directory, task)
}

async fn setup(settings: &Settings) -> Result<(Ready, async_nats::Subscriber), String> {
    let client = crate::link::nats_options(settings, "sessions")
        .await?
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let bucket = crate::bucket::open(
        &js,
        &bucket_name(&settings.cluster),
        "Culex: which node holds each persistent session",
        settings.replicas,
    )
    .await?;
    let requests = client
        .subscribe(request_subject(&settings.cluster, &settings.node))
        .await
        .map_err(|e| e.to_string())?;
    Ok((Ready { client, bucket }, requests))
}

async fn serve(
    settings: Settings,
    export: ExportFn,
    restore: RestoreFn,
    stats: Arc<ClusterStats>,
    ready_tx: watch::Sender<Option<Ready>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = BACKOFF_MIN;
    let (ready, mut requests) = loop {
        if *shutdown.borrow() {
            return;
        }
        match setup(&settings).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(node = %settings.node, error = %e, retry_in = ?delay, "cannot set up the cluster session directory");
                tokio::select! {
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    };
    let _ = ready_tx.send(Some(ready.clone()));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
            m = requests.next() => {
                let Some(m) = m else { break };
                let (Some(reply), Ok(client_id)) = (m.reply, String::from_utf8(m.payload.to_vec())) else {
                    continue;
                };
                let (export, restore, stats) = (Arc::clone(&export), Arc::clone(&restore), Arc::clone(&stats));
                let client = ready.client.clone();
                tokio::spawn(async move {
                    hand_over(client, reply.to_string(), client_id, export, restore, stats).await;
                });
            }
        }
    }
    let _ = ready_tx.send(None);
}

/// Sends the session of `client_id` to the node that asked for it, and takes it back when
/// that node does not confirm it.
async fn hand_over(
    client: async_nats::Client,
    reply: String,
    client_id: String,
    export: ExportFn,
    restore: RestoreFn,
    stats: Arc<ClusterStats>,
) {
    let Some(image) = export(client_id.clone()).await else {
        let _ = client.publish(reply, part(PartKind::None, 0, &[])).await;
        return;
    };
    let result = send_parts(&client, reply, &image).await;
    match result {
        Ok(()) => ClusterStats::inc(&stats.sessions_out),
        Err(e) => {
            ClusterStats::inc(&stats.session_transfer_failures);
            tracing::warn!(client_id = %clip(&client_id), error = %e, "a session transfer to another node was not confirmed; the session stays here");
            restore(image);
        }
    }
}

async fn send_parts(
    client: &async_nats::Client,
    reply: String,
    image: &[u8],
) -> Result<(), String> {
    let size = client
        .server_info()
        .max_payload
        .saturating_sub(PART_OVERHEAD)
        .max(4096);
    let confirm = client.new_inbox();
    let mut confirmed = client
        .subscribe(confirm.clone())
        .await
        .map_err(|e| e.to_string())?;
    let chunks: Vec<&[u8]> = image.chunks(size).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let index = u32::try_from(i).map_err(|_| "session image too large".to_owned())?;
        let r = if i == last {
            client
                .publish_with_reply(
                    reply.clone(),
                    confirm.clone(),
                    part(PartKind::Last, index, chunk),
                )
                .await
        } else {
            client
                .publish(reply.clone(), part(PartKind::More, index, chunk))
                .await
        };
        r.map_err(|e| e.to_string())?;
    }
    client.flush().await.map_err(|e| e.to_string())?;
    tokio::time::timeout(TRANSFER_TIMEOUT, confirmed.next())
        .await
        .map_err(|_| "no confirmation in time".to_owned())?
        .ok_or_else(|| "the connection closed".to_owned())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_garbage_is_refused() {
        let p = part(PartKind::Last, 7, b"abc");
        assert_eq!(parse_part(&p), Some((PartKind::Last, 7, &b"abc"[..])));
        let p = part(PartKind::None, 0, &[]);
        assert_eq!(parse_part(&p), Some((PartKind::None, 0, &[][..])));
        for bad in [&b""[..], b"\x01\x00\x00", b"\x03\x00\x00\x00\x00"] {
            assert_eq!(parse_part(bad), None);
        }
    }
}
