//! `[cluster]` / `cluster_*` in both syntaxes.

use crate::test_util::TempConfig;
use crate::{load_file, Cluster};

/// The first problem reported for `text` in a file `name`.
fn errors(dir: &TempConfig, name: &str, text: &str) -> String {
    let path = dir.file(name, text);
    let e = load_file(&path).expect_err("refused");
    let text = dir.strip(&e.to_string());
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn both_syntaxes_give_the_same_cluster() {
    let dir = TempConfig::new();
    let conf = dir.file(
        "a.conf",
        "cluster_backplane nats://10.0.0.1:4222, tls://nats.example:4443,10.0.0.3:4222\n\
         cluster_node_name node-1\ncluster_replicas 1\ncluster_name site_a\n",
    );
    let toml = dir.file(
        "a.toml",
        "[cluster]\nbackplane = [\"nats://10.0.0.1:4222\", \"tls://nats.example:4443\", \"10.0.0.3:4222\"]\n\
         node_name = \"node-1\"\nreplicas = 1\nname = \"site_a\"\n",
    );
    let want = Cluster {
        backplane: vec![
            "nats://10.0.0.1:4222".into(),
            "tls://nats.example:4443".into(),
            "nats://10.0.0.3:4222".into(),
        ],
        node_name: Some("node-1".into()),
        credentials: None,
        name: "site_a".into(),
        replicas: 1,
    };
    assert_eq!(load_file(&conf).expect("loads").config.cluster, want);
    assert_eq!(load_file(&toml).expect("loads").config.cluster, want);
    assert!(!Cluster::default().enabled());
}

#[test]
fn bad_cluster_options_name_file_line_and_option() {
    let dir = TempConfig::new();
    assert_eq!(
        errors(
            &dir,
            "b.conf",
            "cluster_backplane http://x:80\ncluster_node_name n\n"
        ),
        "b.conf:1: option 'cluster_backplane': invalid URL 'http://x:80': scheme 'http' is not \
         supported; allowed: nats://HOST:PORT or tls://HOST:PORT"
    );
    assert_eq!(
        errors(
            &dir,
            "c.conf",
            "cluster_backplane nats://user:pw@x:4222\ncluster_node_name n\n"
        ),
        "c.conf:1: option 'cluster_backplane': invalid URL 'nats://user:pw@x:4222'; expected \
         nats://HOST:PORT or tls://HOST:PORT, e.g. nats://10.0.0.1:4222 (credentials go in \
         cluster_credentials)"
    );
    let text = errors(&dir, "d.conf", "cluster_backplane nats://x:4222\n");
    assert!(text.contains("cluster_node_name"), "{text}");
    let text = errors(
        &dir,
        "e.toml",
        "[cluster]\nbackplane = [\"nats://x:4222\"]\nnode_name = \"a.b\"\n",
    );
    assert!(
        text.starts_with("e.toml:3:") && text.contains("not a valid node name"),
        "{text}"
    );
    let text = errors(&dir, "f.toml", "[cluster]\nbackplane = [1]\n");
    assert!(text.starts_with("f.toml:2:"), "{text}");
    let text = errors(&dir, "g.conf", "cluster_node_name n\n");
    assert!(text.contains("no backplane"), "{text}");
}
