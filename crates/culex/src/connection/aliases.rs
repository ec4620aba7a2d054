//! Topic Aliases of one MQTT 5 connection, both ways (section 3.3.2.3.4): the ones the client
//! sets (resolved on the way in) and the ones the server assigns (on the way out). Plain state,
//! tested without a socket.

use std::collections::HashMap;
use std::sync::Arc;

use culex_proto::ReasonCode;

/// Topic aliases accepted from a client (MQTT 5 Topic Alias Maximum).
pub(crate) const TOPIC_ALIAS_MAX: u16 = 32;
/// Most Topic Aliases the server uses toward one client (fewer if the client allows fewer).
pub(crate) const OUT_TOPIC_ALIAS_MAX: u16 = 32;
/// Topics shorter than this are never aliased: the alias property (3 bytes) would not make the
/// PUBLISH any smaller.
pub(super) const OUT_ALIAS_MIN_TOPIC: usize = 4;
/// Topic Aliases the server sends to one MQTT 5 client (section 3.3.2.3.4), reset with the
/// connection [MQTT-3.3.2-7].
///
/// Policy: every topic of at least [`OUT_ALIAS_MIN_TOPIC`] bytes gets an alias the first time
/// it is sent, while free aliases remain (up to the client's Topic Alias Maximum, at most
/// [`OUT_TOPIC_ALIAS_MAX`]); after that the least recently used alias is reassigned. A
/// PUBLISH that sets (or resets) an alias carries the full topic and the alias; later ones for
/// the same topic carry an empty topic and the alias. Clients that send no Topic Alias Maximum
/// (or 0) never get an alias [MQTT-3.1.2-27].
#[derive(Debug, Default)]
pub(super) struct OutAliases {
    /// Aliases in use at most: 0 turns aliasing off.
    max: u16,
    /// Topic to alias.
    by_topic: HashMap<Arc<str>, u16>,
    /// Alias `i + 1`: its topic and when it was last used (`tick`).
    slots: Vec<(Arc<str>, u64)>,
    tick: u64,
}

impl OutAliases {
    pub(super) fn new(client_max: u16) -> Self {
        OutAliases {
            max: client_max.min(OUT_TOPIC_ALIAS_MAX),
            ..OutAliases::default()
        }
    }

    /// The alias for `topic` and whether it is new to the client (the PUBLISH must then carry
    /// the full topic), or `None` when the topic is not aliased.
    pub(super) fn assign(&mut self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if self.max == 0 || topic.len() < OUT_ALIAS_MIN_TOPIC {
            return None;
        }
        self.tick += 1;
        if let Some(&alias) = self.by_topic.get(&**topic) {
            if let Some(slot) = self.slots.get_mut(usize::from(alias) - 1) {
                slot.1 = self.tick;
            }
            return Some((alias, false));
        }
        let alias = if self.slots.len() < usize::from(self.max) {
            self.slots.push((Arc::clone(topic), self.tick));
            u16::try_from(self.slots.len()).ok()?
        } else {
            let (i, _) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, used))| *used)?;
            let alias = u16::try_from(i + 1).ok()?;
            let old = std::mem::replace(&mut self.slots[i], (Arc::clone(topic), self.tick));
            if self.by_topic.get(&old.0) == Some(&alias) {
                self.by_topic.remove(&old.0);
            }
            alias
        };
        self.by_topic.insert(Arc::clone(topic), alias);
        Some((alias, true))
    }

    /// Undoes a new alias whose PUBLISH was not sent: the client does not know it. The slot is
    /// the first to be reused.
    pub(super) fn forget(&mut self, alias: u16) {
        if let Some(slot) = self.slots.get_mut(usize::from(alias) - 1) {
            if self.by_topic.get(&slot.0) == Some(&alias) {
                self.by_topic.remove(&slot.0);
            }
            slot.1 = 0;
        }
    }
}

/// Topic Aliases of one MQTT 5 connection, both ways.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    /// Aliases the client set: alias to topic.
    pub(super) inbound: HashMap<u16, String>,
    /// Topic Aliases toward the client.
    pub(super) outbound: OutAliases,
}

impl Aliases {
    /// The aliases of a connection whose client allows `client_max` aliases toward it:
    /// `None` (nothing allocated) when it allows none; inbound aliases are then allocated
    /// with the first one the client sets.
    pub(super) fn toward(client_max: u16) -> Option<Box<Aliases>> {
        let outbound = OutAliases::new(client_max);
        (outbound.max > 0).then(|| {
            Box::new(Aliases {
                inbound: HashMap::new(),
                outbound,
            })
        })
    }

    /// Applies a Topic Alias the client sent with `topic` (section 3.3.2.3.4): an empty topic
    /// is replaced by the alias's topic; a non-empty one (re)sets the alias. Errors are the
    /// connection's end: the alias out of range (0x94 Topic Alias invalid [MQTT-3.3.2-8,
    /// MQTT-3.3.2-9]) or unknown (0x82 Protocol Error).
    pub(super) fn resolve_inbound(
        &mut self,
        alias: u16,
        topic: &mut String,
    ) -> Result<(), (ReasonCode, &'static str)> {
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            return Err((ReasonCode::TopicAliasInvalid, "topic alias out of range"));
        }
        if topic.is_empty() {
            match self.inbound.get(&alias) {
                Some(t) => topic.clone_from(t),
                None => return Err((ReasonCode::ProtocolError, "unknown topic alias")),
            }
        } else {
            self.inbound.insert(alias, topic.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn outbound_assigns_then_reuses_the_least_recently_used() {
        let mut a = OutAliases::new(2);
        assert_eq!(a.assign(&t("a/one")), Some((1, true)));
        assert_eq!(a.assign(&t("a/two")), Some((2, true)));
        assert_eq!(
            a.assign(&t("a/one")),
            Some((1, false)),
            "known: empty topic next time"
        );
        // Full: the least recently used (a/two) gives its alias up.
        assert_eq!(a.assign(&t("a/three")), Some((2, true)));
        assert_eq!(
            a.assign(&t("a/two")),
            Some((1, true)),
            "a/one was now the oldest"
        );
        assert_eq!(a.assign(&t("abc")), None, "too short to be worth an alias");
    }

    #[test]
    fn outbound_is_off_without_a_client_maximum_and_capped_at_ours() {
        assert_eq!(OutAliases::new(0).assign(&t("a/one")), None);
        assert!(Aliases::toward(0).is_none());
        let mut a = OutAliases::new(u16::MAX);
        for i in 0..usize::from(OUT_TOPIC_ALIAS_MAX) + 5 {
            let (alias, _) = a.assign(&t(&format!("topic/{i}"))).unwrap();
            assert!((1..=OUT_TOPIC_ALIAS_MAX).contains(&alias));
        }
    }

    #[test]
    fn a_forgotten_alias_is_new_again_and_reused_first() {
        let mut a = OutAliases::new(2);
        a.assign(&t("a/one"));
        a.assign(&t("a/two"));
        a.forget(2);
        assert_eq!(a.assign(&t("a/three")), Some((2, true)));
        assert_eq!(a.assign(&t("a/two")), Some((1, true)));
    }

    #[test]
    fn inbound_sets_resolves_and_refuses() {
        let mut a = Aliases::default();
        let mut topic = "s/1".to_string();
        assert_eq!(a.resolve_inbound(3, &mut topic), Ok(()));
        let mut empty = String::new();
        assert_eq!(a.resolve_inbound(3, &mut empty), Ok(()));
        assert_eq!(empty, "s/1");
        let mut reset = "s/2".to_string();
        a.resolve_inbound(3, &mut reset).unwrap();
        let mut empty = String::new();
        a.resolve_inbound(3, &mut empty).unwrap();
        assert_eq!(empty, "s/2", "a new topic resets the alias");
        let mut empty = String::new();
        assert_eq!(
            a.resolve_inbound(4, &mut empty),
            Err((ReasonCode::ProtocolError, "unknown topic alias"))
        );
        for bad in [0, TOPIC_ALIAS_MAX + 1] {
            let mut x = "s/3".to_string();
            assert_eq!(
                a.resolve_inbound(bad, &mut x),
                Err((ReasonCode::TopicAliasInvalid, "topic alias out of range"))
            );
        }
    }
}
