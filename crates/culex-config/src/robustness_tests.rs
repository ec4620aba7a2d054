//! Garbage in, diagnostics out: no input may make loading panic.

use crate::test_util::TempConfig;

/// Deterministic pseudo-random numbers (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next()).unwrap_or(0) % n.max(1)
    }
}

const PIECES: &[&str] = &[
    " ",
    "\t",
    "\n",
    "\r\n",
    "#",
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "{",
    "}",
    ",",
    ".",
    "-",
    "-1",
    "0",
    "1",
    "65536",
    "99999999999999999999999",
    "1.5",
    "true",
    "false",
    "2d",
    "1m",
    "never",
    "é",
    "\u{feff}",
    "listener",
    "port",
    "bind_address",
    "include_dir",
    "max_qos",
    "listeners",
    "host",
    "limits",
    "mqtt",
    "sessions",
    "security",
    "max_inflight_messages",
    "persistent_client_expiration",
    "auto_id_prefix",
    "persistence",
    "persistence_location",
    "persistence_batch_delay",
    "autosave_interval",
    "batch_delay",
    "10ms",
    "::1",
    "log_dest",
    "password_file",
];

fn mutate(rng: &mut Lcg, base: &str) -> String {
    let mut chars: Vec<String> = base.chars().map(String::from).collect();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            _ => chars.insert(at, PIECES[rng.below(PIECES.len())].to_owned()),
        }
    }
    chars.concat()
}

const ROUNDS: usize = 1000;

#[test]
fn mutated_inputs_never_panic() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/");
    let toml_base = std::fs::read_to_string(format!("{root}example.toml")).unwrap_or_default();
    let conf_base = std::fs::read_to_string(format!("{root}example.conf")).unwrap_or_default();
    let dir = TempConfig::new();
    let mut rng = Lcg(42);
    for i in 0..ROUNDS {
        let toml = dir.file("t.toml", &mutate(&mut rng, &toml_base));
        let conf = dir.file("t.conf", &mutate(&mut rng, &conf_base));
        let results = [
            crate::toml_format::load(&toml, vec![]),
            crate::mosquitto::load(&conf),
        ];
        for result in results {
            match result {
                Ok(loaded) => assert_eq!(loaded.config.validate(), Ok(()), "round {i}"),
                Err(e) => {
                    assert!(!e.diagnostics.is_empty(), "round {i}");
                    // The TOML checks must catch everything before the
                    // config crate deserializes (its errors have no line).
                    assert!(
                        !e.to_string().contains("invalid configuration:")
                            && !e.to_string().contains("cannot load configuration:"),
                        "round {i}: {e}"
                    );
                }
            }
        }
    }
}
