//! Reading the streams again for a session whose node died (see [`crate::sessions`]): every
//! QoS 1/2 message stored since that node's floor whose topic one of the session's
//! subscriptions matches, up to each stream's end when the read starts.
//!
//! What the dead node's persistent sessions may still need is in two streams of that node:
//! `<cluster>-in-<node>`, what other nodes sent it, and `<cluster>-kept-<node>`, what its own
//! clients published that one of its persistent sessions wanted (see [`crate::link`]). Each
//! publisher's messages are in one of the two, in order; the two are merged by the time the
//! stream stored each message.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use culex_proto::topic::{matches, parse_shared};
use culex_proto::Publish;
use futures_util::StreamExt;

use crate::envelope::decode_publish;
use crate::sessions::Directory;

/// How long a stream may take to hand over the next message.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What was read back.
#[derive(Debug, Default)]
pub struct ReadBack {
    /// Matching messages in the order they were stored, each with the time the stream
    /// stored it (Unix ms).
    pub messages: Vec<(Publish, u64)>,
    /// Matching messages beyond the limit, left out.
    pub left_out: u64,
}

impl Directory {
    /// The messages for node `holder` stored since `since_ms` that `filters` (a session's
    /// subscriptions; shared ones are skipped) match, at most `limit` of them.
    pub async fn read_back(
        &self,
        holder: &str,
        filters: &[String],
        since_ms: u64,
        limit: usize,
    ) -> Result<ReadBack, String> {
        let filters: Vec<&str> = filters
            .iter()
            .map(String::as_str)
            .filter(|f| matches!(parse_shared(f), Ok(None)))
            .collect();
        let mut out = ReadBack::default();
        if filters.is_empty() {
            return Ok(out);
        }
        let js = jetstream::new(self.client().map_err(|e| e.to_string())?);
        let cluster = self.cluster();
        let mut merged = Vec::new();
        for name in [
            format!("{cluster}-in-{holder}"),
            format!("{cluster}-kept-{holder}"),
        ] {
            let (messages, left_out) = read_stream(&js, &name, &filters, since_ms, limit).await?;
            merged.extend(messages);
            out.left_out += left_out;
        }
        // Stable: each stream's own order stays.
        merged.sort_by_key(|(_, stored)| *stored);
        if merged.len() > limit {
            out.left_out += (merged.len() - limit) as u64;
            merged.truncate(limit);
        }
        out.messages = merged;
        Ok(out)
    }
}

/// The matching messages of stream `name` stored since `since_ms` (none when the stream does
/// not exist), at most `limit`, and how many more matched.
async fn read_stream(
    js: &jetstream::Context,
    name: &str,
    filters: &[&str],
    since_ms: u64,
    limit: usize,
) -> Result<(Vec<(Publish, u64)>, u64), String> {
    let mut out = Vec::new();
    let mut left_out = 0;
    let mut stream = match js.get_stream(name).await {
        Ok(s) => s,
        Err(e) => match e.kind() {
            // The node never had anything of this kind.
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                return Ok((out, 0))
            }
            _ => return Err(format!("the stream {name}: {e}")),
        },
    };
    let end = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    if end == 0 {
        return Ok((out, 0));
    }
    let start = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
        .map_err(|e| e.to_string())?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending
        == 0
    {
        return Ok((out, 0));
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let m = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| format!("reading the stream {name} timed out"))?
            .ok_or_else(|| format!("the stream {name} ended"))?
            .map_err(|e| e.to_string())?;
        let info = m.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > end {
            break;
        }
        let stored = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        if let Ok(p) = decode_publish(&m.payload) {
            if filters.iter().any(|f| matches(f, &p.topic)) {
                if out.len() < limit {
                    out.push((p, stored));
                } else {
                    left_out += 1;
                }
            }
        }
        if seq >= end || pending == 0 {
            break;
        }
    }
    Ok((out, left_out))
}
