//! Reading the cluster's stream again for a session whose node died (see [`crate::sessions`]):
//! every QoS 1/2 message stored since that node's floor whose topic one of the session's
//! subscriptions matches, in stream order, up to the stream's end when the read starts.
//!
//! A message is stored once per node that wanted it (or once, kept, when none did): every
//! copy is read, since the dead node's session may have got the message through any of them
//! (its own clients' messages went only to the other nodes), and the copies of one
//! publication, which share their message id up to a `.` and follow each other among their
//! node's publications, count once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use culex_proto::topic::{matches, parse_shared};
use culex_proto::Publish;
use futures_util::StreamExt;

use crate::envelope::decode_publish;
use crate::sessions::Directory;

/// How long the stream may take to hand over the next message.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What was read back.
#[derive(Debug, Default)]
pub struct ReadBack {
    /// Matching messages in stream order, each with the time the stream stored it (Unix ms).
    pub messages: Vec<(Publish, u64)>,
    /// Matching messages beyond the limit, left out.
    pub left_out: u64,
}

impl Directory {
    /// The stream's messages stored since `since_ms` that `filters` (a session's
    /// subscriptions; shared ones are skipped) match, at most `limit` of them.
    pub async fn read_back(
        &self,
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
        let client = self.client().map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let mut stream = js
            .get_stream(format!("{}-messages", self.cluster()))
            .await
            .map_err(|e| e.to_string())?;
        let end = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        let start =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
                .map_err(|e| e.to_string())?;
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}.q1.>", self.cluster()),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        if end == 0
            || consumer
                .info()
                .await
                .map_err(|e| e.to_string())?
                .num_pending
                == 0
        {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        // Per node of origin, the id of its last publication read.
        let mut last_of: std::collections::HashMap<String, String> = Default::default();
        loop {
            let m = tokio::time::timeout(READ_TIMEOUT, messages.next())
                .await
                .map_err(|_| "reading the stream timed out".to_owned())?
                .ok_or_else(|| "the stream ended".to_owned())?
                .map_err(|e| e.to_string())?;
            let info = m.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > end {
                break;
            }
            let stored =
                u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().split('.').next().unwrap_or_default());
            let first_copy = match id
                .and_then(|id| id.rsplit_once('-').map(|(origin, _)| (origin, id)))
            {
                Some((origin, id)) if last_of.get(origin).is_some_and(|last| last == id) => false,
                Some((origin, id)) => {
                    last_of.insert(origin.to_owned(), id.to_owned());
                    true
                }
                None => true,
            };
            if let (true, Ok(p)) = (first_copy, decode_publish(&m.payload)) {
                if filters.iter().any(|f| matches(f, &p.topic)) {
                    if out.messages.len() < limit {
                        out.messages.push((p, stored));
                    } else {
                        out.left_out += 1;
                    }
                }
            }
            if seq >= end || pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}
