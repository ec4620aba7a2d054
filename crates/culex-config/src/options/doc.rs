//! The option tables of docs/configuration.md, made from [`OPTIONS`] and checked by a test:
//! `CULEX_UPDATE_DOCS=1 cargo test -p culex-config options::doc` rewrites them.

use std::path::PathBuf;

use super::{Kind, Section, Spec, OPTIONS};
use crate::Config;

/// The generated blocks: marker and the sections each one lists.
const BLOCKS: &[(&str, &[Section])] = &[
    ("options-top-level", &[Section::Root]),
    ("options-security", &[Section::Security]),
    ("options-limits", &[Section::Limits]),
    ("options-sessions", &[Section::Sessions]),
    ("options-persistence", &[Section::Persistence]),
    ("options-mqtt", &[Section::Mqtt]),
    (
        "options-metrics-sys-log",
        &[Section::Metrics, Section::Sys, Section::Log],
    ),
    ("options-cluster", &[Section::Cluster]),
];

/// The values an option takes, in words.
fn values(kind: Kind) -> String {
    match kind {
        Kind::Bool => "`true` / `false`".to_owned(),
        Kind::Int { allowed, .. } => allowed.to_owned(),
        Kind::Str => "a string".to_owned(),
        Kind::Path => "a path".to_owned(),
        Kind::Duration => "a duration (syntax below)".to_owned(),
        Kind::Seconds => "whole seconds (TOML also a string such as `\"30s\"`)".to_owned(),
        Kind::Delay => "mosquitto.conf: whole milliseconds, 0 to 1000; TOML: a string from \
                        `\"0ms\"` to `\"1s\"`"
            .to_owned(),
        Kind::SocketAddr => "`IP:PORT` (`127.0.0.1:9234`, `[::1]:9234`)".to_owned(),
        Kind::Urls => "`nats://HOST:PORT` or `tls://HOST:PORT`; several: comma-separated in \
                       mosquitto.conf, an array in TOML"
            .to_owned(),
        Kind::Choice(words) => words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(" / "),
    }
}

/// The default as TOML writes it, and the embedded default's where it differs.
fn default(spec: &Spec) -> String {
    let shown = |config: &Config| {
        spec.get(config)
            .map_or_else(|| "none".to_owned(), |v| format!("`{}`", v.toml()))
    };
    let file = shown(&Config::default());
    let embedded = shown(&Config::embedded_default());
    if file == embedded {
        file
    } else {
        format!("{file}; embedded default: {embedded}")
    }
}

/// One Markdown table of the options of `sections`.
fn table(sections: &[Section]) -> String {
    let mut out = String::from(
        "| TOML | mosquitto.conf | values | default | meaning |\n| --- | --- | --- | --- | --- |\n",
    );
    for spec in OPTIONS.iter().filter(|s| sections.contains(&s.section)) {
        let toml = match spec.section {
            Section::Root => format!("`{}`", spec.key),
            section => format!("`[{}]` `{}`", section.name(), spec.key),
        };
        let conf = if spec.conf_key.is_empty() {
            "–".to_owned()
        } else {
            format!("`{}`", spec.conf_key)
        };
        out.push_str(&format!(
            "| {toml} | {conf} | {} | {} | {} |\n",
            values(spec.kind).replace('|', "\\|"),
            default(spec),
            spec.doc.replace('|', "\\|")
        ));
    }
    out
}

/// docs/configuration.md with every generated block replaced by what [`OPTIONS`] makes now.
fn regenerated(doc: &str) -> Result<String, String> {
    let mut out = doc.to_owned();
    for (marker, sections) in BLOCKS {
        let begin = format!("<!-- BEGIN GENERATED: {marker} -->\n");
        let end = format!("<!-- END GENERATED: {marker} -->");
        let start = out
            .find(&begin)
            .ok_or_else(|| format!("no `{begin}` in docs/configuration.md"))?
            + begin.len();
        let stop = out[start..]
            .find(&end)
            .ok_or_else(|| format!("no `{end}` in docs/configuration.md"))?
            + start;
        out.replace_range(start..stop, &table(sections));
    }
    Ok(out)
}

#[test]
fn every_option_is_in_a_block() {
    for spec in OPTIONS {
        assert!(
            BLOCKS.iter().any(|(_, s)| s.contains(&spec.section)),
            "{} is in no generated table",
            spec.path()
        );
    }
}

/// The option tables of docs/configuration.md are made from [`OPTIONS`].
#[test]
fn docs_tables_are_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let fresh = regenerated(&doc).expect("markers");
    if std::env::var_os("CULEX_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).expect("write docs/configuration.md");
        return;
    }
    if let Some((i, (have, want))) = doc
        .lines()
        .zip(fresh.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!(
            "docs/configuration.md line {} is stale (CULEX_UPDATE_DOCS=1 cargo test -p \
             culex-config options::doc rewrites it):\n  have: {have}\n  want: {want}",
            i + 1
        );
    }
    assert_eq!(
        doc, fresh,
        "docs/configuration.md is stale (a table's length changed)"
    );
}
