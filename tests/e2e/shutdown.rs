//! Shutdown: MQTT 5 clients get DISCONNECT 0x8B (Server shutting down), older clients are
//! closed.

use anyhow::Result;
use culex_proto::Protocol;
use culex_test_support::TestBroker;

use crate::*;

#[tokio::test]
async fn stop_sends_v5_disconnect_0x8b_and_closes_v311_and_v31_clients() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut v5 = connect_v5(broker.addr, "v5-client").await?;
    let mut v311 = connect_v311(broker.addr, "v311-client").await?;
    let mut v31 = connect_clean(broker.addr, Protocol::V31, "v31-client").await?;
    let stopping = tokio::spawn(broker.stop());

    expect_closed_with(&mut v5, &[0x8B]).await?;
    expect_closed_with(&mut v311, &[]).await?;
    expect_closed_with(&mut v31, &[]).await?;
    tokio::time::timeout(culex_test_support::WAIT, stopping).await??;
    Ok(())
}

#[tokio::test]
async fn stop_refuses_new_connections() -> Result<()> {
    let broker = TestBroker::start().await?;
    let addr = broker.addr;
    broker.stop().await;
    // Either the connect fails or the socket is closed without a CONNACK.
    if let Ok(mut c) = culex_test_support::RawClient::connect(addr, Protocol::V311).await {
        let sent = c
            .send(&culex_proto::Packet::Connect(Box::new(connect_packet(
                Protocol::V311,
                "late",
                true,
            ))))
            .await;
        if sent.is_ok() {
            match c.recv_or_closed().await {
                Ok(None) => {}
                // A reset is a refusal too; a timeout means the socket was left hanging.
                Err(e) if !format!("{e:#}").contains("timed out") => {}
                Err(e) => return Err(e),
                Ok(Some(p)) => anyhow::bail!("got {p:?} from a stopped broker"),
            }
        }
    }
    Ok(())
}
