//! `check_retain_source`: who published each retained message, so that a retained message is
//! not sent to a new subscriber once its publisher has lost the right to write its topic (an
//! ACL reload), as Mosquitto does by default.
//!
//! Kept beside the retained store, by topic, for retained messages published by a client whose
//! session has an access policy. Messages recovered from the store, wills and internal messages
//! have no entry and are always sent.

use std::collections::HashMap;
use std::sync::Arc;

use super::Router;
use crate::api::AccessPolicy;
use crate::message::Message;

/// The publisher of a retained message.
#[derive(Debug)]
pub(super) struct RetainSource {
    username: Option<String>,
    client_id: Arc<str>,
    access: Arc<dyn AccessPolicy>,
}

/// The publishers of the retained messages, by topic.
pub(super) type RetainSources = HashMap<Arc<str>, RetainSource>;

impl Router {
    /// Records (or forgets) the publisher of the retained message now stored for its topic.
    pub(super) fn note_retain_source(&mut self, message: &Message) {
        if !self.settings.check_retain_source {
            return;
        }
        let source = message
            .origin
            .filter(|_| !message.payload.is_empty())
            .and_then(|sid| self.sessions.get(&sid))
            .and_then(|s| {
                Some(RetainSource {
                    username: s.username.clone(),
                    client_id: Arc::clone(&s.client_id),
                    access: Arc::clone(s.access.as_ref()?),
                })
            });
        match source {
            Some(source) => {
                self.retain_sources
                    .insert(Arc::clone(&message.topic), source);
            }
            None => {
                self.retain_sources.remove(&message.topic);
            }
        }
    }

    /// May the retained message on `topic` still be sent: its publisher (if known) may still
    /// write the topic.
    pub(super) fn retain_source_allows(&self, topic: &str) -> bool {
        if !self.settings.check_retain_source {
            return true;
        }
        self.retain_sources.get(topic).is_none_or(|s| {
            s.access
                .can_write(s.username.as_deref(), &s.client_id, topic)
        })
    }
}
