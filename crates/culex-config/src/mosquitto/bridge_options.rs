//! `connection NAME` blocks: the bridge options that follow one.

use super::*;

impl Reader {
    /// `connection NAME`: starts a bridge; the bridge options that follow apply to it, until
    /// the next `connection` line (as in Mosquitto).
    pub(super) fn connection(&mut self, loc: &Loc, words: &[&str]) {
        let name = match words {
            [name] => (*name).to_owned(),
            [] => {
                self.error(
                    loc,
                    "connection",
                    "missing value; expected: connection NAME",
                );
                return;
            }
            _ => {
                self.error(
                    loc,
                    "connection",
                    format!(
                        "too many values '{}'; expected: connection NAME",
                        words.join(" ")
                    ),
                );
                return;
            }
        };
        if let Some(previous) = self.bridges.iter().find(|b| b.draft.name == name) {
            let previous = previous.loc.label();
            self.error(
                loc,
                "connection",
                format!("bridge \"{name}\" is already defined at {previous}; bridge names must be unique"),
            );
        }
        self.bridges.push(PendingBridge {
            draft: Draft {
                name,
                ..Draft::default()
            },
            loc: loc.clone(),
            locs: HashMap::new(),
            failed: false,
        });
    }

    /// An option of the current bridge (`address`, `topic`, `remote_username`, ...).
    pub(super) fn bridge_option(&mut self, loc: &Loc, option: &str, rest: &str, words: &[&str]) {
        let Some(key) = bridges::CONF_OPTIONS.iter().copied().find(|k| *k == option) else {
            return;
        };
        let Some(bridge) = self.bridges.last_mut() else {
            self.error(
                loc,
                key,
                format!(
                    "'{key}' is a bridge option; it must follow a `connection NAME` line (the bridge it configures)"
                ),
            );
            return;
        };
        let name = bridge.draft.name.clone();
        if matches!(key, "local_username" | "local_password") {
            self.warn(
                loc,
                format!(
                    "option '{key}' is accepted but ignored by Culex: bridge \"{name}\" reaches \
                     the local broker over an internal connection that no password or ACL \
                     applies to"
                ),
            );
            return;
        }
        let result = bridge.draft.apply_conf(key, rest, words).and_then(|()| {
            // Check each topic rule where it is written.
            match (key, bridge.draft.topics.last()) {
                ("topic", Some(rule)) => rule.validate(&name).map_err(|e| e.why),
                _ => Ok(()),
            }
        });
        if key != "topic" {
            bridge.locs.insert(key, loc.clone());
        }
        if let Err(message) = result {
            bridge.failed = true;
            self.error(loc, key, format!("bridge \"{name}\": {message}"));
        }
    }
}
