//! Replicated JetStream key-value buckets (retained messages, session owners).

use async_nats::jetstream::{self, kv};

/// Opens (or creates) the bucket `name`. Its stream is created here with the key-value
/// conventions (`KV_<bucket>`, subjects `$KV.<bucket>.>`, one value per key, rollups allowed,
/// deletes as markers, direct gets), because the client's own bucket creation first queries
/// account limits in a form NATS 2.9 does not answer.
pub async fn open(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create the key-value bucket {name}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open the key-value bucket {name}: {e}"))
}
