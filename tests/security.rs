//! Security features end to end: password files (made by the real `mosquitto_passwd` and by
//! `culex passwd`), every kind of ACL rule, wills, retained messages, `$SYS`, reload on SIGHUP
//! (the real binary), TLS client certificates as usernames, and `per_listener_settings`.
//!
//! Brokers run in-process on 127.0.0.1 port 0 (`TestBroker`), except the SIGHUP tests, which
//! spawn the built `culex` binary with a mosquitto.conf-syntax file (`listener 0 127.0.0.1`)
//! and read the bound port from its log. Clients speak hand-built packets so reason codes and,
//! for MQTT 3.1.1 refusals, the exact CONNACK bytes can be checked. Tests synchronise on events
//! (SUBACK before publishing; a marker message after the messages that must not arrive; the
//! reload log line) rather than on sleeps.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use culex_config::{Config, Listener, Security, Tls};
use culex_proto::{
    decode, encode, ConnAck, Connect, LastWill, Packet, Properties, Protocol, PubResp, Publish,
    QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::pki::{Pki, CLIENT_CN};
use culex_test_support::{TestBroker, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Both protocol versions whose codes differ.
const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

/// How long the SIGHUP tests wait for the broker to start or to log a reload.
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// How long a CONNACK may take. PBKDF2 with the default 210,000 iterations costs about 75 ms
/// in a release build but several seconds of CPU in an unoptimised test build, and tests run
/// in parallel on small machines.
const HASH_WAIT: Duration = Duration::from_secs(90);

/// MQTT 3.1.1 CONNACK "not authorized" (return code 5), byte for byte, as Mosquitto sends it.
const V311_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// MQTT 5.0 reason code "Not authorized".
const NOT_AUTHORIZED: u8 = 0x87;

/// MQTT 3.1.1 SUBACK failure.
const V311_SUBACK_FAILURE: u8 = 0x80;

/// Topic every test ACL lets everyone read and write (`pattern readwrite sync/#`); a message
/// there, sent after messages that must not arrive, proves they did not.
const SYNC: &str = "sync/marker";

/// The reason code a refused SUBSCRIBE gets under `protocol`.
fn sub_refused(protocol: Protocol) -> u8 {
    if protocol.is_v5() {
        NOT_AUTHORIZED
    } else {
        V311_SUBACK_FAILURE
    }
}

/// The PUBACK/PUBREC reason code of a denied publish: 0x87 in 5.0; 3.1.1 has no codes.
fn pub_denied(protocol: Protocol) -> u8 {
    if protocol.is_v5() {
        NOT_AUTHORIZED
    } else {
        0
    }
}

fn label(protocol: Protocol) -> &'static str {
    if protocol.is_v5() {
        "5.0"
    } else {
        "3.1.1"
    }
}

// ---------------------------------------------------------------------------------------------
// A raw MQTT client over any byte stream (TCP or TLS).
// ---------------------------------------------------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: Box<dyn Io>,
    buf: BytesMut,
    protocol: Protocol,
    next_id: u16,
    /// PUBLISH packets that arrived while waiting for something else.
    pending: VecDeque<Publish>,
}

impl Client {
    async fn tcp(addr: SocketAddr, protocol: Protocol) -> Result<Client> {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .context("TCP connect timed out")??;
        s.set_nodelay(true)?;
        Ok(Client::over(Box::new(s), protocol))
    }

    /// A TLS connection trusting the test CA, with `config`'s client certificate (if any).
    /// `None`: the handshake failed.
    async fn tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        protocol: Protocol,
    ) -> Result<Option<Client>> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .context("TCP connect timed out")??;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(WAIT, connector.connect(Pki::server_name()?, tcp))
            .await
            .context("TLS handshake timed out")?
        {
            Ok(s) => Ok(Some(Client::over(Box::new(s), protocol))),
            Err(_) => Ok(None),
        }
    }

    fn over(io: Box<dyn Io>, protocol: Protocol) -> Client {
        Client {
            io,
            buf: BytesMut::new(),
            protocol,
            next_id: 0,
            pending: VecDeque::new(),
        }
    }

    fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out)?;
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next packet and its exact bytes, or `None` when the connection was closed (or
    /// reset, or the TLS session failed).
    async fn recv_raw(&mut self) -> Result<Option<(Packet, Vec<u8>)>> {
        self.recv_raw_within(WAIT).await
    }

    async fn recv_raw_within(&mut self, wait: Duration) -> Result<Option<(Packet, Vec<u8>)>> {
        tokio::time::timeout(wait, async {
            loop {
                let before = self.buf.clone();
                if let Some(p) = decode(&mut self.buf, Some(self.protocol), u32::MAX)? {
                    let used = before.len() - self.buf.len();
                    return Ok(Some((p, before[..used].to_vec())));
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                }
            }
        })
        .await
        .context("timed out waiting for a packet")?
    }

    async fn recv(&mut self) -> Result<Packet> {
        match self.recv_raw().await? {
            Some((p, _)) => Ok(p),
            None => bail!("connection closed by the broker"),
        }
    }

    /// Acknowledges an incoming PUBLISH (subscriptions here are QoS 1, but QoS 2 works too).
    async fn ack_incoming(&mut self, p: &Publish) -> Result<()> {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(PubResp::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => self.send(&Packet::PubRec(PubResp::new(id))).await,
            _ => Ok(()),
        }
    }

    /// Handles a packet that arrived while waiting for another: PUBLISH is acknowledged and
    /// kept, PUBREL answered; anything else is an error.
    async fn stash(&mut self, packet: Packet, waiting_for: &str) -> Result<()> {
        match packet {
            Packet::Publish(p) => {
                self.ack_incoming(&p).await?;
                self.pending.push_back(p);
                Ok(())
            }
            Packet::PubRel(r) => self.send(&Packet::PubComp(PubResp::new(r.packet_id))).await,
            other => bail!("waiting for {waiting_for}, got {other:?}"),
        }
    }

    /// The next delivered message.
    async fn next_publish(&mut self) -> Result<Publish> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        loop {
            let packet = self.recv().await?;
            if let Packet::Publish(p) = packet {
                self.ack_incoming(&p).await?;
                return Ok(p);
            }
            self.stash(packet, "PUBLISH").await?;
        }
    }

    /// The next delivered message must be `topic` with `payload`.
    async fn expect(&mut self, topic: &str, payload: &str) -> Result<()> {
        let p = self
            .next_publish()
            .await
            .with_context(|| format!("waiting for {topic}"))?;
        ensure!(
            p.topic == topic && p.payload == payload.as_bytes(),
            "expected {topic} '{payload}', got {} '{}'",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        );
        Ok(())
    }

    /// Publishes the marker (QoS 1) and expects it to be the next message delivered to `self`:
    /// nothing this client should not have received arrived before it.
    async fn sync_self(&mut self, tag: &str) -> Result<()> {
        let code = self.publish(SYNC, tag, QoS::AtLeastOnce, false).await?;
        ensure!(code == Some(0), "marker publish refused: {code:?}");
        self.expect(SYNC, tag)
            .await
            .with_context(|| format!("before marker '{tag}'"))
    }

    /// SUBSCRIBE (QoS 1 each) and its SUBACK codes; retained messages arriving early are kept.
    async fn subscribe_many(&mut self, filters: &[&str]) -> Result<Vec<u8>> {
        let packet_id = self.packet_id();
        let sub = Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: (*f).to_owned(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
            properties: Properties::default(),
        };
        self.send(&Packet::Subscribe(sub)).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    ensure!(ack.reason_codes.len() == filters.len(), "SUBACK {ack:?}");
                    return Ok(ack.reason_codes.iter().map(|c| c.as_u8()).collect());
                }
                other => self.stash(other, "SUBACK").await?,
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> Result<u8> {
        Ok(self.subscribe_many(&[filter]).await?[0])
    }

    /// Subscribes and insists on QoS 1 being granted.
    async fn subscribe_ok(&mut self, filter: &str) -> Result<()> {
        let code = self.subscribe(filter).await?;
        ensure!(
            code == 1,
            "SUBSCRIBE {filter}: code {code:#04x}, expected 0x01"
        );
        Ok(())
    }

    /// Publishes and completes the QoS flow. Returns `None` for QoS 0, otherwise the reason
    /// code of the PUBACK (QoS 1) or PUBREC (QoS 2; the PUBREL/PUBCOMP exchange is completed
    /// when the PUBREC is not a failure).
    async fn publish(
        &mut self,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) -> Result<Option<u8>> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from(payload.to_owned()),
        }))
        .await?;
        let Some(id) = packet_id else {
            return Ok(None);
        };
        let mut rec_code = None;
        loop {
            match self.recv().await? {
                Packet::PubAck(a) if qos == QoS::AtLeastOnce && a.packet_id == id => {
                    return Ok(Some(a.reason_code.as_u8()));
                }
                Packet::PubRec(r)
                    if qos == QoS::ExactlyOnce && r.packet_id == id && rec_code.is_none() =>
                {
                    let code = r.reason_code.as_u8();
                    if code >= 0x80 {
                        return Ok(Some(code));
                    }
                    rec_code = Some(code);
                    self.send(&Packet::PubRel(PubResp::new(id))).await?;
                }
                Packet::PubComp(c) if rec_code.is_some() && c.packet_id == id => {
                    return Ok(rec_code);
                }
                other => self.stash(other, "the publish acknowledgement").await?,
            }
        }
    }
}

/// A CONNECT with clean start, keep alive 60 and the given credentials.
fn connect_packet(
    protocol: Protocol,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: username.map(str::to_owned),
        password: password.map(|p| Bytes::from(p.to_owned())),
        properties: Properties::default(),
    }
}

/// Sends `connect` on `client` and returns the CONNACK with its exact bytes. Waits up to
/// [`HASH_WAIT`]: a password check at the default cost takes seconds in a debug build.
async fn handshake(client: &mut Client, connect: Connect) -> Result<(ConnAck, Vec<u8>)> {
    client.send(&Packet::Connect(Box::new(connect))).await?;
    match client.recv_raw_within(HASH_WAIT).await? {
        Some((Packet::ConnAck(ack), raw)) => Ok((ack, raw)),
        Some((other, _)) => bail!("expected CONNACK, got {other:?}"),
        None => bail!("connection closed before CONNACK"),
    }
}

/// Connects over TCP and insists on being accepted.
async fn login_with(addr: SocketAddr, connect: Connect) -> Result<Client> {
    let who = format!(
        "{} client '{}' user {:?}",
        label(connect.protocol),
        connect.client_id,
        connect.username
    );
    let mut c = Client::tcp(addr, connect.protocol).await?;
    let (ack, _) = handshake(&mut c, connect).await?;
    ensure!(
        ack.reason_code.as_u8() == 0,
        "{who} refused with {:#04x}",
        ack.reason_code.as_u8()
    );
    Ok(c)
}

async fn login(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Client> {
    login_with(
        addr,
        connect_packet(protocol, client_id, username, password),
    )
    .await
}

/// Checks that an accepted-or-refused `client` after sending `connect` was refused as Mosquitto
/// refuses unauthorised clients (3.1.1: CONNACK `20 02 00 05`; 5.0: reason 0x87), then closed.
async fn expect_refused_on(mut client: Client, connect: Connect) -> Result<()> {
    let protocol = connect.protocol;
    let what = format!(
        "{} CONNECT user {:?} password {:?}",
        label(protocol),
        connect.username,
        connect.password
    );
    let (ack, raw) = handshake(&mut client, connect).await?;
    if protocol.is_v5() {
        ensure!(
            ack.reason_code.as_u8() == NOT_AUTHORIZED,
            "{what}: reason {:#04x}, expected 0x87",
            ack.reason_code.as_u8()
        );
        ensure!(!ack.session_present, "{what}: session present on refusal");
    } else {
        ensure!(
            raw == V311_NOT_AUTHORIZED,
            "{what}: CONNACK bytes {raw:02x?}, expected {V311_NOT_AUTHORIZED:02x?}"
        );
    }
    ensure!(
        client.recv_raw().await?.is_none(),
        "{what}: connection not closed after the refusal"
    );
    Ok(())
}

async fn expect_refused(
    addr: SocketAddr,
    protocol: Protocol,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<()> {
    let client = Client::tcp(addr, protocol).await?;
    expect_refused_on(
        client,
        connect_packet(protocol, "refused", username, password),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Files and brokers.
// ---------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn culex_bin() -> &'static str {
    env!("CARGO_BIN_EXE_culex")
}

/// Adds (or with `create`, creates the file with) a user via `culex passwd -b`. `iterations`:
/// `None` for the default PBKDF2 count.
fn culex_passwd(
    file: &Path,
    user: &str,
    password: &str,
    create: bool,
    iterations: Option<u32>,
) -> Result<()> {
    let mut cmd = Command::new(culex_bin());
    cmd.arg("passwd");
    if let Some(i) = iterations {
        cmd.args(["-I", &i.to_string()]);
    }
    if create {
        cmd.arg("-c");
    }
    cmd.arg("-b").arg(file).args([user, password]);
    let out = cmd.output().context("run culex passwd")?;
    ensure!(
        out.status.success(),
        "culex passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Quick hashes for tests that are not about hashing.
fn quick_passwd(file: &Path, users: &[(&str, &str)]) -> Result<()> {
    for (i, (user, password)) in users.iter().enumerate() {
        culex_passwd(file, user, password, i == 0, Some(1000))?;
    }
    Ok(())
}

/// A configuration with one plain listener (replaced by `TestBroker::start_with`).
fn secured(allow_anonymous: bool, password_file: Option<&Path>, acl_file: Option<&Path>) -> Config {
    let mut config = Config::embedded_default();
    config.security.allow_anonymous = allow_anonymous;
    config.security.password_file = password_file.map(Path::to_path_buf);
    config.security.acl_file = acl_file.map(Path::to_path_buf);
    config
}

/// A broker with anonymous access, no password file (usernames are taken as given, as in
/// Mosquitto) and `acl` as the ACL file.
async fn acl_broker(acl: &str) -> Result<(TestBroker, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let acl_path = write(dir.path(), "acl", acl)?;
    let broker = TestBroker::start_with(secured(true, None, Some(&acl_path))).await?;
    Ok((broker, dir))
}

// ---------------------------------------------------------------------------------------------
// 1. Password files and anonymous access.
// ---------------------------------------------------------------------------------------------

/// The checks every password-protected broker must pass, for both protocols: `user` with
/// `password` gets in; a wrong password, an unknown user and (allow_anonymous false) no
/// username are refused as Mosquitto refuses them.
async fn check_password_login(addr: SocketAddr, user: &str, password: &str) -> Result<()> {
    for protocol in BOTH {
        let mut c = login(addr, protocol, "pw-ok", Some(user), Some(password))
            .await
            .with_context(|| format!("{user} with the right password"))?;
        c.subscribe_ok("sync/#").await?;
        c.sync_self("logged in").await?;

        expect_refused(addr, protocol, Some(user), Some("not-the-password"))
            .await
            .context("wrong password")?;
        expect_refused(addr, protocol, Some(user), None)
            .await
            .context("username without password")?;
        expect_refused(addr, protocol, Some("nobody"), Some(password))
            .await
            .context("unknown user")?;
        expect_refused(addr, protocol, None, None)
            .await
            .context("no username, allow_anonymous false")?;
    }
    Ok(())
}

/// A password file entry whose password is empty (written by hand or by another tool) lets
/// nobody in: a CONNECT with that user and an empty or missing password is refused, as
/// Mosquitto refuses it.
#[tokio::test]
async fn an_empty_password_is_refused_even_when_the_file_holds_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    let empty = culex_auth::password_hash(b"", culex_auth::HashKind::Sha512)?;
    std::fs::write(&file, format!("blank:{empty}\n"))?;
    let broker = TestBroker::start_with(secured(false, Some(&file), None)).await?;
    for protocol in BOTH {
        expect_refused(broker.addr, protocol, Some("blank"), Some(""))
            .await
            .context("empty password")?;
        expect_refused(broker.addr, protocol, Some("blank"), None)
            .await
            .context("no password")?;
    }
    broker.stop().await;
    Ok(())
}

/// `use_username_as_clientid`: the user name is the client id, so a second connection of the
/// same user takes the first one's session over whatever client id it sends; a client without
/// a user name is refused, as Mosquitto refuses it.
#[tokio::test]
async fn use_username_as_clientid_gives_each_user_one_session() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    quick_passwd(&file, &[("alice", "alice-pw")])?;
    let mut config = secured(true, Some(&file), None);
    config.security.use_username_as_clientid = true;
    let broker = TestBroker::start_with(config).await?;
    let protocol = Protocol::V5;
    let mut first = login(
        broker.addr,
        protocol,
        "phone",
        Some("alice"),
        Some("alice-pw"),
    )
    .await?;
    let _second = login(
        broker.addr,
        protocol,
        "laptop",
        Some("alice"),
        Some("alice-pw"),
    )
    .await?;
    match first.recv_raw().await? {
        Some((Packet::Disconnect(d), _)) => {
            ensure!(d.reason_code.as_u8() == 0x8E, "{d:?}");
        }
        other => bail!("the first connection of alice was not taken over: {other:?}"),
    }
    expect_refused(broker.addr, protocol, None, None)
        .await
        .context("no user name, nothing to use as client id")?;
    broker.stop().await;
    Ok(())
}

/// `check_retain_source` (on by default, as in Mosquitto): once the ACL no longer lets the
/// publisher of a retained message write its topic, new subscribers do not get that message.
#[tokio::test]
async fn a_retained_message_of_a_revoked_publisher_is_not_sent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acl_v1 = "user alice\ntopic readwrite r/#\nuser reader\ntopic read r/#\n\
                  pattern readwrite sync/#\n";
    let acl = write(dir.path(), "acl", acl_v1)?;
    let broker = TestBroker::start_with(secured(true, None, Some(&acl))).await?;
    let protocol = Protocol::V5;
    let mut alice = login(broker.addr, protocol, "alice-pub", Some("alice"), None).await?;
    let code = alice
        .publish("r/x", "state", QoS::AtLeastOnce, true)
        .await?;
    ensure!(code == Some(0), "retained publish: {code:?}");
    let mut reader = login(broker.addr, protocol, "reader-1", Some("reader"), None).await?;
    reader.subscribe_ok("r/#").await?;
    reader
        .expect("r/x", "state")
        .await
        .context("before the ACL change")?;

    write(
        dir.path(),
        "acl",
        &acl_v1.replace("topic readwrite r/#", "topic read r/#"),
    )?;
    broker
        .server()
        .reload()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut late = login(broker.addr, protocol, "reader-2", Some("reader"), None).await?;
    late.subscribe_ok("sync/#").await?;
    late.subscribe_ok("r/#").await?;
    late.sync_self("after the revocation").await?;
    broker.stop().await;
    Ok(())
}

/// A reload that takes read access away also stops what was already queued for the reader
/// (and what was in flight is not resent): after the reload, acknowledging the in-flight
/// message frees the window, and nothing of the revoked topic follows.
#[tokio::test]
async fn a_reload_that_revokes_reads_stops_queued_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acl_v1 = "user reader\ntopic read news/#\nuser writer\ntopic write news/#\n\
                  pattern readwrite sync/#\n";
    let acl = write(dir.path(), "acl", acl_v1)?;
    let mut config = secured(true, None, Some(&acl));
    config.limits.max_inflight_messages = 1;
    let broker = TestBroker::start_with(config).await?;
    let protocol = Protocol::V5;
    let mut reader = login(broker.addr, protocol, "reader", Some("reader"), None).await?;
    reader.subscribe_ok("news/#").await?;
    let mut writer = login(broker.addr, protocol, "writer", Some("writer"), None).await?;
    for i in 1..=3 {
        let code = writer
            .publish(&format!("news/{i}"), "x", QoS::AtLeastOnce, false)
            .await?;
        ensure!(code == Some(0), "publish news/{i}: {code:?}");
    }
    // news/1 is in flight (not acknowledged); news/2 and news/3 wait behind a window of 1.
    let first = match reader.recv().await? {
        Packet::Publish(p) => p,
        other => bail!("expected news/1, got {other:?}"),
    };
    ensure!(first.topic == "news/1", "{first:?}");

    write(
        dir.path(),
        "acl",
        &acl_v1.replace("topic read news/#\n", ""),
    )?;
    broker
        .server()
        .reload()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    reader.ack_incoming(&first).await?;
    // The next message the reader gets is its own marker, not news/2 or news/3.
    reader.subscribe_ok("sync/#").await?;
    reader.sync_self("after the revocation").await?;
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn password_file_from_mosquitto_passwd_authenticates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    let out = match Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&file)
        .args(["mosq-user", "mosq pass:1"])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "SKIPPED: mosquitto_passwd is not installed ({e}); apt-get install mosquitto"
            );
            return Ok(());
        }
    };
    ensure!(
        out.status.success(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second user added to the same file (no -c).
    let out = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&file)
        .args(["second", "other-secret"])
        .output()?;
    ensure!(out.status.success(), "mosquitto_passwd (add) failed");
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        text.lines()
            .all(|l| l.contains(":$6$") || l.contains(":$7$")),
        "unexpected mosquitto_passwd output: {text}"
    );

    let broker = TestBroker::start_with(secured(false, Some(&file), None)).await?;
    check_password_login(broker.addr, "mosq-user", "mosq pass:1").await?;
    check_password_login(broker.addr, "second", "other-secret").await?;
    ensure!(broker.server().counters().auth_failures.get() >= 16);
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn password_file_from_culex_passwd_authenticates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    // The default (210,000 PBKDF2 iterations) for one user, a cheap count for the other.
    culex_passwd(&file, "carol", "c4rol's pw", true, None)?;
    culex_passwd(&file, "dave", "dave-pw", false, Some(1000))?;
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        text.contains("carol:$7$210000$") && text.contains("dave:$7$1000$"),
        "unexpected culex passwd output: {text}"
    );
    let broker = TestBroker::start_with(secured(false, Some(&file), None)).await?;
    check_password_login(broker.addr, "dave", "dave-pw").await?;
    // Default-cost hashes take seconds to check in a debug build: one success, one failure.
    login(
        broker.addr,
        Protocol::V5,
        "carol",
        Some("carol"),
        Some("c4rol's pw"),
    )
    .await?;
    expect_refused(
        broker.addr,
        Protocol::V311,
        Some("carol"),
        Some("c4rol's PW"),
    )
    .await?;
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn anonymous_allowed_alongside_a_password_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    quick_passwd(&file, &[("alice", "alice-pw")])?;
    let broker = TestBroker::start_with(secured(true, Some(&file), None)).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        let mut anon = login(addr, protocol, "anon", None, None)
            .await
            .context("anonymous with allow_anonymous true")?;
        anon.subscribe_ok("sync/#").await?;
        anon.sync_self("anonymous").await?;
        login(addr, protocol, "alice", Some("alice"), Some("alice-pw")).await?;
        // A username is still checked against the file.
        expect_refused(addr, protocol, Some("alice"), Some("wrong"))
            .await
            .context("wrong password with allow_anonymous true")?;
        expect_refused(addr, protocol, Some("mallory"), Some("alice-pw"))
            .await
            .context("unknown user with allow_anonymous true")?;
    }
    broker.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. ACL rules.
// ---------------------------------------------------------------------------------------------

/// The ACL used by most tests: every rule kind.
const ACL: &str = "\
# Anonymous clients: the topic lines before the first user line.
topic read public/#
topic write inbox/anon

user admin
topic readwrite #
topic readwrite $SYS/#

user alice
topic read r/#
topic write w/#
# no access word: readwrite
topic rw/#
topic deny rw/secret/#
topic read d/+

user bob
topic read w/#

# Patterns apply to everyone.
pattern readwrite users/%u/#
pattern read devices/%c/#
pattern readwrite sync/#
";

/// `admin` (ACL `topic readwrite #`) subscribed to everything, after its SUBACK.
async fn admin_watching(addr: SocketAddr, protocol: Protocol, id: &str) -> Result<Client> {
    let mut admin = login(addr, protocol, id, Some("admin"), None).await?;
    admin.subscribe_ok("#").await?;
    Ok(admin)
}

#[tokio::test]
async fn acl_read_write_readwrite_and_deny() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = admin_watching(addr, protocol, "admin").await?;
        let mut bob = login(addr, protocol, "bob", Some("bob"), None).await?;
        bob.subscribe_ok("w/#").await?;
        bob.subscribe_ok("sync/#").await?;
        let mut alice = login(addr, protocol, "alice", Some("alice"), None).await?;

        // SUBSCRIBE: read / readwrite filters are granted, write-only, denied and unlisted
        // filters are refused with 0x80 (3.1.1) or 0x87 (5.0).
        let codes = alice
            .subscribe_many(&[
                "r/#",
                "w/#",
                "rw/#",
                "rw/secret/x",
                "d/#",
                "other/#",
                "sync/#",
            ])
            .await?;
        let no = sub_refused(protocol);
        ensure!(
            codes == [1, no, 1, no, 1, no, 1],
            "{v}: alice's SUBACK codes {codes:02x?}"
        );

        // PUBLISH (QoS 1): write and readwrite allowed, read-only, denied and unlisted refused.
        let denied = pub_denied(protocol);
        for (topic, expected) in [
            ("w/1", 0),
            ("rw/1", 0),
            ("r/1", denied),
            ("rw/secret/1", denied),
            ("other/1", denied),
        ] {
            let code = alice
                .publish(topic, "from alice", QoS::AtLeastOnce, false)
                .await?;
            ensure!(
                code == Some(expected),
                "{v}: alice publish {topic}: {code:?}, expected {expected:#04x}"
            );
        }
        alice
            .publish(SYNC, "alice done", QoS::AtLeastOnce, false)
            .await?;
        // alice reads her own rw/1 (readwrite), not w/1 (write only, not subscribed).
        alice.expect("rw/1", "from alice").await?;
        alice.expect(SYNC, "alice done").await?;
        // admin sees exactly the allowed publishes; the denied ones were dropped.
        admin.expect("w/1", "from alice").await?;
        admin.expect("rw/1", "from alice").await?;
        admin.expect(SYNC, "alice done").await?;
        // bob reads w/# (read rule in his own section).
        bob.expect("w/1", "from alice").await?;
        bob.expect(SYNC, "alice done").await?;

        // Deliveries are READ-checked one by one, even through granted wildcard filters:
        // rw/# does not deliver rw/secret/..., and d/# (granted by `topic read d/+`) delivers
        // d/1 but not d/1/2.
        for topic in ["r/2", "rw/2", "rw/secret/2", "d/1", "d/1/2", "w/2"] {
            let code = admin
                .publish(topic, "from admin", QoS::AtLeastOnce, false)
                .await?;
            ensure!(code == Some(0), "{v}: admin publish {topic}: {code:?}");
        }
        admin
            .publish(SYNC, "admin done", QoS::AtLeastOnce, false)
            .await?;
        for topic in ["r/2", "rw/2", "d/1"] {
            alice.expect(topic, "from admin").await.context(v)?;
        }
        alice.expect(SYNC, "admin done").await.context(v)?;
        bob.expect("w/2", "from admin").await?;
        bob.expect(SYNC, "admin done").await?;
        // (admin's own copies, then the marker)
        for topic in ["r/2", "rw/2", "rw/secret/2", "d/1", "d/1/2", "w/2", SYNC] {
            let p = admin.next_publish().await?;
            ensure!(
                p.topic == topic,
                "{v}: admin got {} instead of {topic}",
                p.topic
            );
        }
    }
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn acl_denied_publish_is_acknowledged_and_dropped_at_every_qos() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = admin_watching(addr, protocol, "admin").await?;
        let mut alice = login(addr, protocol, "alice", Some("alice"), None).await?;
        // QoS 0: silently dropped, the connection stays up.
        ensure!(alice
            .publish("r/q0", "x", QoS::AtMostOnce, false)
            .await?
            .is_none());
        // QoS 1: PUBACK (5.0: 0x87).
        let code = alice.publish("r/q1", "x", QoS::AtLeastOnce, false).await?;
        ensure!(
            code == Some(pub_denied(protocol)),
            "{v}: QoS 1 ack {code:?}"
        );
        // QoS 2: PUBREC (5.0: 0x87, flow ends); 3.1.1: PUBREC, then PUBREL/PUBCOMP completes.
        let code = alice.publish("r/q2", "x", QoS::ExactlyOnce, false).await?;
        ensure!(
            code == Some(pub_denied(protocol)),
            "{v}: QoS 2 PUBREC {code:?}"
        );
        // Retained and denied: not stored either (checked by a later subscriber below).
        let code = alice.publish("r/ret", "x", QoS::AtLeastOnce, true).await?;
        ensure!(
            code == Some(pub_denied(protocol)),
            "{v}: retained ack {code:?}"
        );
        // An allowed QoS 2 publish still completes.
        let code = alice.publish("w/q2", "ok", QoS::ExactlyOnce, false).await?;
        ensure!(code == Some(0), "{v}: allowed QoS 2: {code:?}");
        alice
            .publish(SYNC, "denied done", QoS::AtLeastOnce, false)
            .await?;
        admin.expect("w/q2", "ok").await.context(v)?;
        admin.expect(SYNC, "denied done").await.context(v)?;

        let mut late = login(addr, protocol, "late", Some("admin"), None).await?;
        late.subscribe_ok("r/#").await?;
        late.subscribe_ok("sync/#").await?;
        late.sync_self("no retained").await.context(v)?;
    }
    ensure!(broker.server().counters().acl_denied_publish.get() >= 8);
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn acl_anonymous_rules_apply_only_to_anonymous_clients() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = admin_watching(addr, protocol, "admin").await?;
        let mut anon = login(addr, protocol, "anon", None, None).await?;
        let no = sub_refused(protocol);
        let codes = anon
            .subscribe_many(&["public/#", "inbox/anon", "w/#", "sync/#"])
            .await?;
        ensure!(
            codes == [1, no, no, 1],
            "{v}: anonymous SUBACK {codes:02x?}"
        );
        let denied = pub_denied(protocol);
        for (topic, expected) in [("inbox/anon", 0), ("public/x", denied), ("w/x", denied)] {
            let code = anon.publish(topic, "anon", QoS::AtLeastOnce, false).await?;
            ensure!(
                code == Some(expected),
                "{v}: anonymous publish {topic}: {code:?}"
            );
        }
        anon.publish(SYNC, "anon done", QoS::AtLeastOnce, false)
            .await?;
        admin.expect("inbox/anon", "anon").await.context(v)?;
        admin.expect(SYNC, "anon done").await.context(v)?;
        admin
            .publish("public/news", "hello", QoS::AtLeastOnce, false)
            .await?;
        admin
            .publish(SYNC, "admin done", QoS::AtLeastOnce, false)
            .await?;
        anon.expect(SYNC, "anon done").await?;
        anon.expect("public/news", "hello").await.context(v)?;
        anon.expect(SYNC, "admin done").await?;

        // A client with a username never gets the anonymous rules.
        let mut carol = login(addr, protocol, "carol", Some("carol"), None).await?;
        let codes = carol.subscribe_many(&["public/#", "sync/#"]).await?;
        ensure!(codes == [no, 1], "{v}: carol SUBACK {codes:02x?}");
        let code = carol
            .publish("inbox/anon", "carol", QoS::AtLeastOnce, false)
            .await?;
        ensure!(
            code == Some(denied),
            "{v}: carol publish inbox/anon: {code:?}"
        );
        carol.sync_self("carol").await?;
    }
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn acl_patterns_substitute_username_and_client_id() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let no = sub_refused(protocol);
        let denied = pub_denied(protocol);
        let mut admin = admin_watching(addr, protocol, "admin").await?;

        // %u: carol (no section of her own) may use users/carol/#, not users/dave/#.
        let mut carol = login(addr, protocol, "dev7", Some("carol"), None).await?;
        let codes = carol
            .subscribe_many(&[
                "users/carol/#",
                "users/dave/#",
                "devices/dev7/#",
                "devices/dev8/#",
                "sync/#",
            ])
            .await?;
        ensure!(
            codes == [1, no, 1, no, 1],
            "{v}: carol (client dev7) SUBACK {codes:02x?}"
        );
        for (topic, expected) in [
            ("users/carol/inbox", 0),
            ("users/dave/inbox", denied),
            // %c pattern is read-only
            ("devices/dev7/cmd", denied),
            ("devices/dev8/cmd", denied),
        ] {
            let code = carol
                .publish(topic, "carol", QoS::AtLeastOnce, false)
                .await?;
            ensure!(
                code == Some(expected),
                "{v}: carol publish {topic}: {code:?}, expected {expected:#04x}"
            );
        }
        carol
            .publish(SYNC, "carol done", QoS::AtLeastOnce, false)
            .await?;
        carol
            .expect("users/carol/inbox", "carol")
            .await
            .context(v)?;
        carol.expect(SYNC, "carol done").await.context(v)?;
        admin
            .expect("users/carol/inbox", "carol")
            .await
            .context(v)?;
        admin.expect(SYNC, "carol done").await.context(v)?;

        // Deliveries through the patterns.
        for topic in [
            "users/carol/a",
            "users/dave/a",
            "devices/dev7/a",
            "devices/dev8/a",
        ] {
            admin
                .publish(topic, "admin", QoS::AtLeastOnce, false)
                .await?;
        }
        admin
            .publish(SYNC, "admin done", QoS::AtLeastOnce, false)
            .await?;
        carol.expect("users/carol/a", "admin").await.context(v)?;
        carol.expect("devices/dev7/a", "admin").await.context(v)?;
        carol.expect(SYNC, "admin done").await.context(v)?;

        // A %u pattern never matches an anonymous client: not `users//...`, not a literal
        // `%u`, not anything. The %c pattern does apply to anonymous clients.
        let mut anon = login(addr, protocol, "dev9", None, None).await?;
        let codes = anon
            .subscribe_many(&[
                "users/+/inbox",
                "users/%u/inbox",
                "users//inbox",
                "devices/dev9/#",
                "sync/#",
            ])
            .await?;
        ensure!(
            codes == [no, no, no, 1, 1],
            "{v}: anonymous (client dev9) SUBACK {codes:02x?}"
        );
        for topic in ["users//inbox", "users/%u/inbox", "users/carol/inbox"] {
            let code = anon.publish(topic, "anon", QoS::AtLeastOnce, false).await?;
            ensure!(
                code == Some(denied),
                "{v}: anonymous publish {topic}: {code:?}"
            );
        }
        anon.publish(SYNC, "anon done", QoS::AtLeastOnce, false)
            .await?;
        anon.expect(SYNC, "anon done").await.context(v)?;
        for topic in [
            "users/carol/a",
            "users/dave/a",
            "devices/dev7/a",
            "devices/dev8/a",
        ] {
            admin.expect(topic, "admin").await.context(v)?;
        }
        admin.expect(SYNC, "admin done").await.context(v)?;
        admin.expect(SYNC, "anon done").await.context(v)?;
    }
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn acl_retained_messages_on_denied_topics_are_not_sent_on_subscribe() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = login(addr, protocol, "admin", Some("admin"), None).await?;
        for (topic, payload) in [
            ("rw/kept", "readable"),
            ("rw/secret/kept", "hidden"),
            ("r/kept", "readable too"),
            ("d/x/y", "too deep"),
        ] {
            let code = admin
                .publish(topic, payload, QoS::AtLeastOnce, true)
                .await?;
            ensure!(code == Some(0), "{v}: retained publish {topic}: {code:?}");
        }
        let mut alice = login(addr, protocol, "alice", Some("alice"), None).await?;
        let codes = alice
            .subscribe_many(&["rw/#", "r/#", "d/#", "sync/#"])
            .await?;
        ensure!(codes == [1, 1, 1, 1], "{v}: SUBACK {codes:02x?}");
        alice
            .publish(SYNC, "after", QoS::AtLeastOnce, false)
            .await?;
        let mut got = Vec::new();
        loop {
            let p = alice.next_publish().await?;
            if p.topic == SYNC {
                break;
            }
            ensure!(p.retain, "{v}: {} delivered without retain", p.topic);
            got.push(p.topic);
        }
        got.sort();
        ensure!(
            got == ["r/kept", "rw/kept"],
            "{v}: retained messages sent to alice: {got:?}"
        );
        // Clear them for the next protocol round.
        for topic in ["rw/kept", "rw/secret/kept", "r/kept", "d/x/y"] {
            admin.publish(topic, "", QoS::AtLeastOnce, true).await?;
        }
    }
    broker.stop().await;
    Ok(())
}

/// Waits (bounded) until the broker counts `n` connected clients.
async fn wait_connected(broker: &TestBroker, n: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while broker.server().counters().connected.get() != n {
        ensure!(
            Instant::now() < deadline,
            "still {} clients connected, expected {n}",
            broker.server().counters().connected.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn acl_will_to_a_denied_topic_is_not_published() -> Result<()> {
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = admin_watching(addr, protocol, "admin").await?;
        let will = |topic: &str, payload: &str| LastWill {
            topic: topic.to_owned(),
            payload: Bytes::from(payload.to_owned()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        };
        // A will alice may not write (read-only topic): dropped when the connection breaks.
        let mut connect = connect_packet(protocol, "alice-denied-will", Some("alice"), None);
        connect.will = Some(will("r/will", "denied will"));
        let denied = login_with(addr, connect).await?;
        wait_connected(&broker, 2).await?;
        drop(denied);
        wait_connected(&broker, 1).await?;

        // A will alice may write: published.
        let mut connect = connect_packet(protocol, "alice-allowed-will", Some("alice"), None);
        connect.will = Some(will("w/will", "allowed will"));
        let allowed = login_with(addr, connect).await?;
        wait_connected(&broker, 2).await?;
        drop(allowed);

        admin.expect("w/will", "allowed will").await.context(v)?;
        admin.sync_self("after wills").await.context(v)?;
        drop(admin);
        wait_connected(&broker, 0).await?;
    }
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn publishing_to_sys_is_denied_whatever_the_acl_says() -> Result<()> {
    // admin has `topic readwrite #` and `topic readwrite $SYS/#`.
    let (broker, _dir) = acl_broker(ACL).await?;
    let addr = broker.addr;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut admin = login(addr, protocol, "admin", Some("admin"), None).await?;
        let codes = admin.subscribe_many(&["$SYS/test/#", "sync/#"]).await?;
        ensure!(
            codes == [1, 1],
            "{v}: reading $SYS is allowed: {codes:02x?}"
        );
        ensure!(admin
            .publish("$SYS/test/q0", "x", QoS::AtMostOnce, false)
            .await?
            .is_none());
        for (topic, qos, retain) in [
            ("$SYS/test/q1", QoS::AtLeastOnce, false),
            ("$SYS/test/q2", QoS::ExactlyOnce, false),
            ("$SYS/test/retained", QoS::AtLeastOnce, true),
        ] {
            let code = admin.publish(topic, "x", qos, retain).await?;
            ensure!(
                code == Some(pub_denied(protocol)),
                "{v}: publish {topic}: {code:?}"
            );
        }
        // Subscribing again would send a retained $SYS/test/retained, had it been stored.
        admin.subscribe_ok("$SYS/test/#").await?;
        admin.sync_self("after $SYS").await.context(v)?;
    }
    broker.stop().await;

    // Without any ACL file (everything else allowed), `$SYS` is still not writable.
    let broker = TestBroker::start_with(secured(true, None, None)).await?;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut c = login(broker.addr, protocol, "no-acl", None, None).await?;
        c.subscribe_ok("$SYS/test/#").await?;
        c.subscribe_ok("sync/#").await?;
        for (topic, qos, retain) in [
            ("$SYS/test/q0", QoS::AtMostOnce, false),
            ("$SYS/test/q1", QoS::AtLeastOnce, false),
            ("$SYS/test/q2", QoS::ExactlyOnce, false),
            ("$SYS/test/retained", QoS::AtLeastOnce, true),
        ] {
            let code = c.publish(topic, "x", qos, retain).await?;
            let expected = (qos != QoS::AtMostOnce).then(|| pub_denied(protocol));
            ensure!(
                code == expected,
                "{v}: publish {topic} without ACL: {code:?}"
            );
        }
        c.subscribe_ok("$SYS/test/#").await?;
        c.sync_self("after $SYS without ACL").await.context(v)?;
    }
    broker.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. TLS: the client certificate's CN as username.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_identity_as_username_gets_the_users_acl_rights() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let acl = write(
        dir.path(),
        "acl",
        &format!("user {CLIENT_CN}\ntopic readwrite {CLIENT_CN}/#\n\npattern readwrite sync/#\n"),
    )?;
    // A password file without alice and no anonymous access: the certificate is what lets
    // her in.
    let passwd = dir.path().join("passwd");
    quick_passwd(&passwd, &[("bob", "bob-pw")])?;
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1", 0).with_tls(Tls {
            use_identity_as_username: true,
            ..pki.server_tls_with_ca(false)
        })],
        security: Security {
            allow_anonymous: false,
            password_file: Some(passwd),
            acl_file: Some(acl),
            use_username_as_clientid: false,
        },
        ..Config::default()
    };
    let broker = TestBroker::start_exact(config).await?;
    let addr = broker.addr;
    let with_cert = pki.client_config(Some((Pki::CLIENT_CERT, Pki::CLIENT_KEY)), &[])?;
    let without_cert = pki.client_config(None, &[])?;
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        let mut alice = Client::tls(addr, Arc::clone(&with_cert), protocol)
            .await?
            .context("TLS handshake with a client certificate failed")?;
        // The MQTT username and password are ignored: the CN decides.
        let (ack, _) = handshake(
            &mut alice,
            connect_packet(protocol, "cert-client", Some("bob"), Some("wrong")),
        )
        .await?;
        ensure!(ack.reason_code.as_u8() == 0, "{v}: CONNACK {ack:?}");
        let no = sub_refused(protocol);
        let codes = alice
            .subscribe_many(&["alice/#", "bob/#", "other", "sync/#"])
            .await?;
        ensure!(codes == [1, no, no, 1], "{v}: SUBACK {codes:02x?}");
        let code = alice
            .publish("alice/notes", "mine", QoS::AtLeastOnce, false)
            .await?;
        ensure!(code == Some(0), "{v}: publish alice/notes: {code:?}");
        for topic in ["bob/notes", "other"] {
            let code = alice
                .publish(topic, "not mine", QoS::AtLeastOnce, false)
                .await?;
            ensure!(
                code == Some(pub_denied(protocol)),
                "{v}: publish {topic}: {code:?}"
            );
        }
        alice.expect("alice/notes", "mine").await.context(v)?;
        alice.sync_self("tls").await.context(v)?;

        // No certificate on this listener: no identity, no connection (whether the broker
        // refuses with a CONNACK or closes the connection).
        if let Some(mut anon) = Client::tls(addr, Arc::clone(&without_cert), protocol).await? {
            let connect = connect_packet(protocol, "no-cert", Some("bob"), Some("bob-pw"));
            if anon.send(&Packet::Connect(Box::new(connect))).await.is_ok() {
                match anon.recv_raw().await? {
                    None => {}
                    Some((Packet::ConnAck(ack), _)) => {
                        ensure!(
                            ack.reason_code.as_u8() >= 0x80
                                || (!protocol.is_v5() && ack.reason_code.as_u8() != 0),
                            "{v}: client without certificate accepted: {ack:?}"
                        );
                        ensure!(anon.recv_raw().await?.is_none(), "{v}: not closed");
                    }
                    Some((other, _)) => bail!("{v}: unexpected {other:?}"),
                }
            }
        }
    }
    broker.stop().await;
    Ok(())
}

/// `use_subject_as_username`: the whole subject (RFC 2253, as Mosquitto prints it) is the
/// username the ACL file names.
#[tokio::test]
async fn tls_subject_as_username_gets_the_subjects_acl_rights() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let subject = format!("CN={CLIENT_CN}");
    let acl = write(
        dir.path(),
        "acl",
        &format!("user {subject}\ntopic readwrite subject/#\n"),
    )?;
    let config = Config {
        listeners: vec![Listener::new("127.0.0.1", 0).with_tls(Tls {
            use_subject_as_username: true,
            ..pki.server_tls_with_ca(true)
        })],
        security: Security {
            allow_anonymous: false,
            password_file: None,
            acl_file: Some(acl),
            use_username_as_clientid: false,
        },
        ..Config::default()
    };
    let broker = TestBroker::start_exact(config).await?;
    let with_cert = pki.client_config(Some((Pki::CLIENT_CERT, Pki::CLIENT_KEY)), &[])?;
    let protocol = Protocol::V5;
    let mut alice = Client::tls(broker.addr, with_cert, protocol)
        .await?
        .context("TLS handshake with a client certificate failed")?;
    let (ack, _) = handshake(
        &mut alice,
        connect_packet(protocol, "subject-client", None, None),
    )
    .await?;
    ensure!(ack.reason_code.as_u8() == 0, "CONNACK {ack:?}");
    let no = sub_refused(protocol);
    let codes = alice.subscribe_many(&["subject/#", "alice/#"]).await?;
    ensure!(
        codes == [1, no],
        "SUBACK {codes:02x?}: the user is not {subject:?}"
    );
    broker.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. per_listener_settings.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_listener_settings_give_each_listener_its_own_rules() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let passwd = dir.path().join("passwd");
    quick_passwd(&passwd, &[("alice", "alice-pw")])?;
    let acl = write(
        dir.path(),
        "acl",
        "user alice\ntopic readwrite alice/#\npattern readwrite sync/#\n",
    )?;
    let open = Listener {
        security: Some(Security {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            use_username_as_clientid: false,
        }),
        ..Listener::new("127.0.0.1", 0)
    };
    let closed = Listener {
        security: Some(Security {
            allow_anonymous: false,
            password_file: Some(passwd),
            acl_file: Some(acl),
            use_username_as_clientid: false,
        }),
        ..Listener::new("127.0.0.1", 0)
    };
    let config = Config {
        listeners: vec![open, closed],
        per_listener_settings: true,
        // The global settings must not leak into either listener.
        security: Security {
            allow_anonymous: false,
            password_file: None,
            acl_file: None,
            use_username_as_clientid: false,
        },
        ..Config::default()
    };
    let broker = TestBroker::start_exact(config).await?;
    let addrs = broker.local_addrs().to_vec();
    ensure!(addrs.len() == 2, "bound {addrs:?}");
    let (open, closed) = (addrs[0], addrs[1]);
    for protocol in BOTH {
        wait_connected(&broker, 0).await?;
        let v = label(protocol);
        // The open listener: anonymous clients may do anything (no ACL there).
        let mut anon = login(open, protocol, "anon", None, None)
            .await
            .context("anonymous on the open listener")?;
        let codes = anon.subscribe_many(&["#"]).await?;
        ensure!(codes == [1], "{v}: open listener SUBACK {codes:02x?}");
        // The closed listener: anonymous refused, passwords checked, ACL applied.
        expect_refused(closed, protocol, None, None)
            .await
            .context("anonymous on the password listener")?;
        expect_refused(closed, protocol, Some("alice"), Some("wrong"))
            .await
            .context("wrong password on the password listener")?;
        let mut alice = login(closed, protocol, "alice", Some("alice"), Some("alice-pw")).await?;
        let no = sub_refused(protocol);
        let codes = alice.subscribe_many(&["alice/#", "#", "sync/#"]).await?;
        ensure!(
            codes == [1, no, 1],
            "{v}: password listener SUBACK {codes:02x?}"
        );
        let code = alice
            .publish("elsewhere", "x", QoS::AtLeastOnce, false)
            .await?;
        ensure!(code == Some(pub_denied(protocol)), "{v}: {code:?}");
        let code = alice
            .publish("alice/x", "from alice", QoS::AtLeastOnce, false)
            .await?;
        ensure!(code == Some(0), "{v}: {code:?}");
        alice.expect("alice/x", "from alice").await.context(v)?;
        alice.sync_self("closed").await.context(v)?;
        // Messages cross listeners; the anonymous client's publish is not ACL-checked on the
        // open listener, but alice's delivery is checked against the closed listener's ACL.
        anon.expect("alice/x", "from alice").await.context(v)?;
        anon.expect(SYNC, "closed").await.context(v)?;
        anon.publish("alice/y", "from anon", QoS::AtLeastOnce, false)
            .await?;
        anon.publish("elsewhere", "from anon", QoS::AtLeastOnce, false)
            .await?;
        anon.publish(SYNC, "open", QoS::AtLeastOnce, false).await?;
        alice.expect("alice/y", "from anon").await.context(v)?;
        alice.expect(SYNC, "open").await.context(v)?;
        // A user name on the open listener (no password file there) is accepted as given,
        // and a password that would be wrong on the other listener does not matter.
        login(open, protocol, "alice-open", Some("alice"), Some("wrong")).await?;
    }
    broker.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. SIGHUP reload (the real binary).
// ---------------------------------------------------------------------------------------------

/// The `culex` binary running a configuration file; killed on drop.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(conf: &Path) -> Result<Process> {
        let mut child = Command::new(culex_bin())
            .arg("-c")
            .arg(conf)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn culex")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[culex] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut p = Process {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = p.wait_log(0, "listening on 127.0.0.1:")?;
        let port = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse::<u16>().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        p.addr.set_port(port);
        p.wait_for_sighup_handler()?;
        Ok(p)
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The first log line from index `from` on that contains `needle`.
    fn wait_log(&mut self, from: usize, needle: &str) -> Result<String> {
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("culex exited ({status}) before logging {needle:?}");
            }
            ensure!(
                Instant::now() < deadline,
                "culex did not log {needle:?} within {RELOAD_WAIT:?}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker installs its SIGHUP handler after it starts listening; a SIGHUP before that
    /// would terminate it. Waits until the kernel reports the signal as caught.
    fn wait_for_sighup_handler(&self) -> Result<()> {
        let status_path = format!("/proc/{}/status", self.child.id());
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            let status = std::fs::read_to_string(&status_path)?;
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .context("no SigCgt in /proc status")?;
            // SIGHUP is signal 1: bit 0.
            if caught & 1 == 1 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "culex never handled SIGHUP");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP and waits for the reload's outcome in the log; returns the line.
    fn reload(&mut self) -> Result<String> {
        let from = self.log_len();
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -HUP failed");
        let deadline = Instant::now() + RELOAD_WAIT;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().skip(from).find(|l| {
                l.contains("reloaded password, ACL and certificate files")
                    || l.contains("reload failed")
            }) {
                return Ok(line.clone());
            }
            ensure!(Instant::now() < deadline, "no reload result logged");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conf_file(dir: &Path, body: &str) -> Result<PathBuf> {
    write(dir, "culex.conf", &format!("listener 0 127.0.0.1\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_new_password_file_changes_who_may_log_in() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let passwd = dir.path().join("passwd");
    quick_passwd(&passwd, &[("alice", "alice-pw"), ("carol", "carol-pw")])?;
    // `user root`: started as root (as in CI), the broker would otherwise switch to an
    // unprivileged user that cannot read this root-only temporary directory on SIGHUP.
    let conf = conf_file(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\nuser root\n",
            passwd.display()
        ),
    )?;
    let mut broker = Process::start(&conf)?;
    let addr = broker.addr;
    for protocol in BOTH {
        login(addr, protocol, "a", Some("alice"), Some("alice-pw")).await?;
        expect_refused(addr, protocol, Some("bob"), Some("bob-pw")).await?;
    }
    // Clients connected before the reload.
    let mut alice = login(
        addr,
        Protocol::V5,
        "before",
        Some("alice"),
        Some("alice-pw"),
    )
    .await?;
    let mut carol = login(
        addr,
        Protocol::V311,
        "carol",
        Some("carol"),
        Some("carol-pw"),
    )
    .await?;

    // The new file: alice's line removed, bob added, carol's line untouched (edited as an
    // operator would, then moved into place).
    let bob_file = dir.path().join("bob");
    quick_passwd(&bob_file, &[("bob", "bob-pw")])?;
    let old = std::fs::read_to_string(&passwd)?;
    let carol_line = old
        .lines()
        .find(|l| l.starts_with("carol:"))
        .context("carol's line")?;
    let replace = |text: String| -> Result<()> {
        let tmp = dir.path().join("passwd.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &passwd)?;
        Ok(())
    };
    replace(format!(
        "{carol_line}\n{}",
        std::fs::read_to_string(&bob_file)?
    ))?;
    let outcome = broker.reload()?;
    ensure!(outcome.contains("reloaded"), "reload: {outcome}");
    for protocol in BOTH {
        login(addr, protocol, "b", Some("bob"), Some("bob-pw"))
            .await
            .context("new user after reload")?;
        expect_refused(addr, protocol, Some("alice"), Some("alice-pw"))
            .await
            .context("removed user after reload")?;
    }
    // The removed user's open connection is closed with the reason (as Mosquitto closes it).
    match alice.recv_raw().await? {
        Some((Packet::Disconnect(d), _)) => ensure!(
            d.reason_code.as_u8() == NOT_AUTHORIZED
                && d.properties.reason_string.as_deref()
                    == Some("user removed from the password file"),
            "{d:?}"
        ),
        other => bail!("alice's connection was not closed after her removal: {other:?}"),
    }
    // carol's entry is the same: her connection stays.
    carol
        .subscribe_ok("t/#")
        .await
        .context("carol after the first reload")?;

    // carol's password changed: her connection (MQTT 3.1.1: no DISCONNECT) is closed.
    let carol_file = dir.path().join("carol");
    quick_passwd(&carol_file, &[("carol", "new-carol-pw")])?;
    let bob_line = std::fs::read_to_string(&bob_file)?;
    replace(format!(
        "{}{bob_line}",
        std::fs::read_to_string(&carol_file)?
    ))?;
    let outcome = broker.reload()?;
    ensure!(outcome.contains("reloaded"), "reload: {outcome}");
    ensure!(
        carol.recv_raw().await?.is_none(),
        "carol's connection stays open after her password changed"
    );
    broker.wait_log(0, "password changed in the password file")?;
    login(
        addr,
        Protocol::V311,
        "carol-2",
        Some("carol"),
        Some("new-carol-pw"),
    )
    .await?;
    Ok(())
}

const RELOAD_ACL_V1: &str = "\
user alice
topic readwrite a/#
user watcher
topic read #
pattern readwrite sync/#
";

const RELOAD_ACL_V2: &str = "\
user alice
topic write a/#
topic readwrite b/#
user watcher
topic read #
pattern readwrite sync/#
";

/// Alice and the watcher under ACL v1: alice subscribed to `a/#` (and `sync/#`), `b/#` refused.
async fn reload_clients(addr: SocketAddr) -> Result<(Client, Client)> {
    let mut watcher = login(addr, Protocol::V311, "watcher", Some("watcher"), None).await?;
    watcher.subscribe_ok("#").await?;
    let mut alice = login(addr, Protocol::V5, "alice", Some("alice"), None).await?;
    let codes = alice.subscribe_many(&["a/#", "b/#", "sync/#"]).await?;
    ensure!(codes == [1, NOT_AUTHORIZED, 1], "SUBACK {codes:02x?}");
    Ok((alice, watcher))
}

/// Checks alice's rights under ACL v1 (`topic readwrite a/#` only).
async fn check_acl_v1(alice: &mut Client, watcher: &mut Client, tag: &str) -> Result<()> {
    let code = alice.publish("a/1", tag, QoS::AtLeastOnce, false).await?;
    ensure!(code == Some(0), "{tag}: publish a/1: {code:?}");
    let code = alice.publish("b/1", tag, QoS::AtLeastOnce, false).await?;
    ensure!(code == Some(NOT_AUTHORIZED), "{tag}: publish b/1: {code:?}");
    alice.publish(SYNC, tag, QoS::AtLeastOnce, false).await?;
    alice.expect("a/1", tag).await.context("alice reads a/1")?;
    alice.expect(SYNC, tag).await?;
    watcher.expect("a/1", tag).await?;
    watcher.expect(SYNC, tag).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_new_acl_applies_to_connected_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acl = write(dir.path(), "acl", RELOAD_ACL_V1)?;
    let conf = conf_file(
        dir.path(),
        &format!("allow_anonymous true\nacl_file {}\n", acl.display()),
    )?;
    let mut broker = Process::start(&conf)?;
    let (mut alice, mut watcher) = reload_clients(broker.addr).await?;
    check_acl_v1(&mut alice, &mut watcher, "before reload").await?;

    write(dir.path(), "acl", RELOAD_ACL_V2)?;
    let outcome = broker.reload()?;
    ensure!(outcome.contains("reloaded"), "reload: {outcome}");

    // Same connections, new rules: b/ is writable now; a/ is still writable but no longer
    // readable, so alice's existing a/# subscription stops delivering.
    let code = alice
        .publish("b/2", "after", QoS::AtLeastOnce, false)
        .await?;
    ensure!(code == Some(0), "publish b/2 after reload: {code:?}");
    let code = alice
        .publish("a/2", "after", QoS::AtLeastOnce, false)
        .await?;
    ensure!(code == Some(0), "publish a/2 after reload: {code:?}");
    let code = alice
        .publish("c/2", "after", QoS::AtLeastOnce, false)
        .await?;
    ensure!(code == Some(NOT_AUTHORIZED), "publish c/2: {code:?}");
    alice
        .sync_self("after reload")
        .await
        .context("alice must not receive a/2 any more")?;
    watcher.expect("b/2", "after").await?;
    watcher.expect("a/2", "after").await?;
    watcher.expect(SYNC, "after reload").await?;
    // And SUBSCRIBE follows the new file too.
    let codes = alice.subscribe_many(&["b/#", "a/#"]).await?;
    ensure!(
        codes == [1, NOT_AUTHORIZED],
        "SUBACK after reload {codes:02x?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_acl_keeps_the_previous_rules() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let acl = write(dir.path(), "acl", RELOAD_ACL_V1)?;
    let conf = conf_file(
        dir.path(),
        &format!("allow_anonymous true\nacl_file {}\n", acl.display()),
    )?;
    let mut broker = Process::start(&conf)?;
    let addr = broker.addr;
    let (mut alice, mut watcher) = reload_clients(addr).await?;
    check_acl_v1(&mut alice, &mut watcher, "before reload").await?;

    // Line 3 is not ACL syntax. (The good lines around it would open b/# to alice.)
    write(
        dir.path(),
        "acl",
        "user alice\ntopic readwrite b/#\nfrobnicate everything\ntopic readwrite #\n",
    )?;
    let outcome = broker.reload()?;
    ensure!(
        outcome.contains("reload failed"),
        "a broken ACL must fail the reload: {outcome}"
    );
    let acl_name = format!("{}:3", acl.display());
    ensure!(
        broker
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reload failed") && l.contains(&acl_name)),
        "the error must name {acl_name}: {outcome}"
    );

    // The connected clients and new ones still live under v1.
    check_acl_v1(&mut alice, &mut watcher, "after failed reload").await?;
    let mut fresh = login(addr, Protocol::V311, "fresh", Some("alice"), None).await?;
    let codes = fresh.subscribe_many(&["a/#", "b/#", "#"]).await?;
    ensure!(
        codes == [1, V311_SUBACK_FAILURE, V311_SUBACK_FAILURE],
        "new client after failed reload: SUBACK {codes:02x?}"
    );
    let mut anon = login(addr, Protocol::V5, "anon", None, None).await?;
    let code = anon.publish("a/anon", "x", QoS::AtLeastOnce, false).await?;
    ensure!(
        code == Some(NOT_AUTHORIZED),
        "anonymous was never allowed anything: {code:?}"
    );

    // Fixed file: the next SIGHUP applies it.
    write(dir.path(), "acl", RELOAD_ACL_V2)?;
    let outcome = broker.reload()?;
    ensure!(outcome.contains("reloaded"), "reload after fix: {outcome}");
    let code = alice
        .publish("b/3", "fixed", QoS::AtLeastOnce, false)
        .await?;
    ensure!(
        code == Some(0),
        "publish b/3 after the fixed reload: {code:?}"
    );
    watcher.expect("b/3", "fixed").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The shipped examples: configs/secure.conf with configs/passwd.example and acl.example.
// ---------------------------------------------------------------------------------------------

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// rumqttc (MQTT 3.1.1) over `wss://` with a username and password: subscribes to `topic`,
/// publishes to it and receives the message back.
async fn rumqttc_wss_round_trip(
    port: u16,
    ca: Vec<u8>,
    user: &str,
    password: &str,
    topic: &str,
) -> Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, TlsConfiguration, Transport};
    let mut opts = MqttOptions::new("wss-example", format!("wss://localhost:{port}/mqtt"), port);
    opts.set_transport(Transport::wss_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }));
    opts.set_credentials(user, password);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    // The password check at the default cost is slow in a debug build.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(HASH_WAIT.as_secs());
    eventloop.set_network_options(network);
    client.subscribe(topic, rumqttc::QoS::AtLeastOnce).await?;
    let mut published = false;
    loop {
        let event = tokio::time::timeout(HASH_WAIT, eventloop.poll())
            .await
            .context("rumqttc over wss timed out")??;
        match event {
            Event::Incoming(rumqttc::Packet::SubAck(ack)) if !published => {
                ensure!(
                    ack.return_codes
                        == [rumqttc::SubscribeReasonCode::Success(
                            rumqttc::QoS::AtLeastOnce
                        )],
                    "SUBACK {ack:?}"
                );
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, "over wss")
                    .await?;
                published = true;
            }
            Event::Incoming(rumqttc::Packet::Publish(p)) => {
                ensure!(p.topic == topic && &p.payload[..] == b"over wss", "{p:?}");
                return Ok(());
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_secure_example_works() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    std::fs::create_dir(root.join("certs"))?;
    for (from, to) in [
        (Pki::SERVER_CERT, "certs/server.pem"),
        (Pki::SERVER_KEY, "certs/server.key"),
        (Pki::CA, "certs/ca.pem"),
    ] {
        std::fs::copy(pki.path(from), root.join(to))?;
    }
    std::fs::copy(repo_file("configs/passwd.example"), root.join("passwd"))?;
    std::fs::copy(repo_file("configs/acl.example"), root.join("acl"))?;
    // The example as shipped, with its files moved here and ephemeral loopback ports.
    let text = std::fs::read_to_string(repo_file("configs/secure.conf"))?
        .replace("/etc/culex/", &format!("{}/", root.display()));
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("listener ") {
                "listener 0 127.0.0.1".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    let conf = write(root, "secure.conf", &text.join("\n"))?;
    let loaded = culex_config::load_file(&conf).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        loaded.warnings.is_empty(),
        "warnings: {:?}",
        loaded.warnings
    );
    let config = loaded.config;
    ensure!(config.listeners.len() == 3, "{:?}", config.listeners);
    ensure!(config.listeners[0].tls.is_none());
    ensure!(config.listeners[1].tls.is_some());
    ensure!(
        config.listeners[2].tls.is_some()
            && config.listeners[2].protocol == culex_config::ListenerProtocol::Websockets
    );
    ensure!(!config.security.allow_anonymous);
    let broker = TestBroker::start_exact(config).await?;
    let addrs = broker.local_addrs().to_vec();
    ensure!(addrs.len() == 3, "{addrs:?}");
    let (plain, tls, wss) = (addrs[0], addrs[1], addrs[2]);

    // Plain listener: alice with the password documented in passwd.example.
    expect_refused(plain, Protocol::V5, None, None).await?;
    expect_refused(
        plain,
        Protocol::V311,
        Some("mallory"),
        Some("alice-example-pw"),
    )
    .await?;
    let mut alice = login(
        plain,
        Protocol::V5,
        "alice-phone",
        Some("alice"),
        Some("alice-example-pw"),
    )
    .await?;
    let codes = alice
        .subscribe_many(&["home/#", "home/alarm/code", "sensors/#"])
        .await?;
    ensure!(
        codes == [1, NOT_AUTHORIZED, NOT_AUTHORIZED],
        "alice SUBACK {codes:02x?}"
    );

    // TLS listener: bob, MQTT 3.1.1, client id thermo1 (for the %c patterns).
    let mut bob = Client::tls(tls, pki.client_config(None, &[])?, Protocol::V311)
        .await?
        .context("TLS handshake")?;
    let (ack, _) = handshake(
        &mut bob,
        connect_packet(
            Protocol::V311,
            "thermo1",
            Some("bob"),
            Some("bob-example-pw"),
        ),
    )
    .await?;
    ensure!(ack.reason_code.as_u8() == 0, "bob: {ack:?}");
    let codes = bob
        .subscribe_many(&[
            "home/+/temperature",
            "home/#",
            "devices/thermo1/config",
            "devices/other/config",
            "users/bob/#",
        ])
        .await?;
    let f = V311_SUBACK_FAILURE;
    ensure!(codes == [1, f, 1, f, 1], "bob SUBACK {codes:02x?}");

    for (topic, expected) in [
        ("home/kitchen/temperature", 0),
        ("home/alarm/code", NOT_AUTHORIZED),
        ("sensors/kitchen", NOT_AUTHORIZED),
        ("devices/thermo1/config", NOT_AUTHORIZED),
        ("users/bob/inbox", NOT_AUTHORIZED),
    ] {
        let code = alice
            .publish(topic, "from alice", QoS::AtLeastOnce, false)
            .await?;
        ensure!(
            code == Some(expected),
            "alice publish {topic}: {code:?}, expected {expected:#04x}"
        );
    }
    alice
        .expect("home/kitchen/temperature", "from alice")
        .await?;
    bob.expect("home/kitchen/temperature", "from alice").await?;
    // bob writes his own tree (write only: alice reads it, bob does not get it back), and the
    // status topic of his client id; the topic with spaces is readwrite.
    bob.publish("home/bob/living room/lamp", "on", QoS::AtLeastOnce, false)
        .await?;
    bob.publish("home/bob/desk", "off", QoS::AtLeastOnce, false)
        .await?;
    bob.publish("devices/thermo1/status", "ok", QoS::AtLeastOnce, false)
        .await?;
    bob.publish("users/bob/inbox", "note", QoS::AtLeastOnce, false)
        .await?;
    alice.expect("home/bob/living room/lamp", "on").await?;
    alice.expect("home/bob/desk", "off").await?;
    bob.expect("users/bob/inbox", "note").await?;

    // Secure WebSocket listener: sensor with its password, in its %u inbox.
    rumqttc_wss_round_trip(
        wss.port(),
        pki.read(Pki::CA)?,
        "sensor",
        "sensor-example-pw",
        "users/sensor/inbox",
    )
    .await
    .context("sensor over wss")?;
    broker.stop().await;
    Ok(())
}
