//! The family table against itself and against docs/metrics.md.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{all, doc_table, sys_doc_rows, Group, Kind};

#[test]
fn names_follow_the_conventions() {
    let mut seen = HashSet::new();
    for f in all() {
        assert!(seen.insert(f.name), "{} twice", f.name);
        assert!(f.name.starts_with("culex_"), "{}", f.name);
        assert_eq!(
            f.name.ends_with("_total"),
            f.kind == Kind::Counter,
            "{}: counters, and only counters, end in _total",
            f.name
        );
        assert!(
            !f.help.is_empty() && !f.help.contains('`'),
            "{}: plain help",
            f.name
        );
    }
    let mut topics = HashSet::new();
    for topic in all().flat_map(|f| f.sys) {
        assert!(topics.insert(*topic), "$SYS/broker/{topic} twice");
    }
}

/// docs/metrics.md with every generated block replaced by what the table makes now.
fn regenerated(doc: &str) -> Result<String, String> {
    let mut blocks: Vec<(String, String)> = Group::ALL
        .iter()
        .map(|g| (g.marker().to_string(), doc_table(*g)))
        .collect();
    blocks.push(("metrics-sys".to_string(), sys_doc_rows()));
    let mut out = doc.to_string();
    for (marker, body) in blocks {
        let begin = format!("<!-- BEGIN GENERATED: {marker} -->\n");
        let end = format!("<!-- END GENERATED: {marker} -->");
        let start = out
            .find(&begin)
            .ok_or_else(|| format!("no `{begin}` in docs/metrics.md"))?
            + begin.len();
        let stop = out[start..]
            .find(&end)
            .ok_or_else(|| format!("no `{end}` in docs/metrics.md"))?
            + start;
        out.replace_range(start..stop, &body);
    }
    Ok(out)
}

/// The tables of docs/metrics.md are made from [`all`]. After changing a family, run
/// `CULEX_UPDATE_DOCS=1 cargo test -p culex --lib metrics::families` to rewrite them.
#[test]
fn docs_tables_are_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let doc = std::fs::read_to_string(&path).expect("docs/metrics.md");
    let fresh = regenerated(&doc).expect("markers");
    if std::env::var_os("CULEX_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).expect("write docs/metrics.md");
        return;
    }
    if let Some((i, (have, want))) = doc
        .lines()
        .zip(fresh.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!(
            "docs/metrics.md line {} is stale (CULEX_UPDATE_DOCS=1 cargo test -p culex --lib \
             metrics::families rewrites it):\n  have: {have}\n  want: {want}",
            i + 1
        );
    }
    assert_eq!(
        doc, fresh,
        "docs/metrics.md is stale (a table's length changed)"
    );
}
