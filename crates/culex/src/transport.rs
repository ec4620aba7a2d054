//! Listener transports: TLS (rustls) and MQTT over WebSocket, in front of the connection task.
//!
//! The accept loop only accepts sockets; everything that waits on the client (the TLS handshake,
//! the WebSocket upgrade) happens in the connection's own task, bounded by [`HANDSHAKE_TIMEOUT`],
//! so a slow or silent client never holds up accepting others. [`serve_accepted`] then hands the
//! resulting stream to `connection::serve`, which is generic over the stream type: plain TCP,
//! TLS, WebSocket, and WebSocket over TLS are four monomorphised calls.
//!
//! TLS server configurations are built at startup from the listener's PEM files (errors name the
//! listener, the option and the file) and kept in an [`ArcSwap`], so [`TlsListener::reload`] can
//! replace them (SIGHUP) without touching connections in progress; a reload that fails keeps the
//! previous configuration.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use culex_broker::ConnId;
use culex_client::ws::WsByteStream;
use culex_config::{Listener, ListenerProtocol, Tls, TlsVersion};
use futures_util::future::Either;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info};

use crate::connection::{self, Peer};
use crate::server::{ConnSlot, ListenerCtx, Shared};

/// How long a client has to finish the TLS handshake and the WebSocket upgrade (together).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket subprotocols accepted, in order of preference: `mqtt` (MQTT 3.1.1 and 5.0, what
/// MQTT.js and Paho send) and `mqttv3.1` (MQTT 3.1 clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Room beyond `max_packet_size` in one WebSocket message, for small packets sent in the same
/// message as a maximum-size one.
const WS_MESSAGE_SLACK: usize = 64 * 1024;

/// A TLS setup problem, naming the listener, the option and the file, e.g.
/// `listener 127.0.0.1:8883: keyfile key.pem: does not match certfile cert.pem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError(String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// `listener HOST:PORT`, how errors and logs name a listener.
pub(crate) fn listener_label(listener: &Listener) -> String {
    match listener.host.as_deref() {
        None => format!("listener *:{}", listener.port),
        Some(h) if h.contains(':') => format!("listener [{h}]:{}", listener.port),
        Some(h) => format!("listener {h}:{}", listener.port),
    }
}

/// Builds the TLS configuration of every TLS listener in `config`, reporting every problem (one
/// per line). `culex --check` can call this to catch what only parsing the PEM files finds
/// (a key that does not match its certificate, a file without a certificate).
pub fn check_tls(config: &culex_config::Config) -> Result<(), TlsSetupError> {
    let problems: Vec<String> = config
        .listeners
        .iter()
        .filter_map(|l| {
            let tls = l.tls.as_ref()?;
            build_server_config(&listener_label(l), tls).err()
        })
        .map(|e| e.0)
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TlsSetupError(problems.join("\n")))
    }
}

/// Notes for `culex --check`: what a configuration that is valid may still refuse (client
/// certificates of X.509 version 1 on listeners that verify client certificates).
pub fn check_notes(config: &culex_config::Config) -> Vec<String> {
    config
        .listeners
        .iter()
        .filter(|l| {
            l.tls
                .as_ref()
                .is_some_and(|t| t.cafile.is_some() || t.capath.is_some())
        })
        .map(|l| {
            format!(
                "note: {}: {}",
                listener_label(l),
                crate::tls_identity::V1_HINT
            )
        })
        .collect()
}

/// The TLS side of one configured listener: its settings and the current rustls configuration,
/// swappable at run time. Shared by the sockets of that listener (e.g. `0.0.0.0` and `::`).
pub(crate) struct TlsListener {
    label: String,
    settings: Tls,
    config: ArcSwap<ServerConfig>,
    /// The client certificate verifier of `config` (with the CAs and CRLs it was built from),
    /// to check connected clients' certificates again after a reload.
    verifier: ArcSwapOption<ClientVerifier>,
}

/// A client certificate verifier (boxed in a sized type for [`ArcSwapOption`]).
struct ClientVerifier(Arc<dyn ClientCertVerifier>);

/// What [`build`] makes from a listener's TLS settings.
struct Built {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<ClientVerifier>>,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("label", &self.label)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Loads the listener's certificate, key and CAs.
    pub(crate) fn new(listener: &Listener, settings: &Tls) -> Result<TlsListener, TlsSetupError> {
        let label = listener_label(listener);
        let built = build(&label, settings)?;
        Ok(TlsListener {
            label,
            settings: settings.clone(),
            config: ArcSwap::new(built.config),
            verifier: ArcSwapOption::new(built.verifier),
        })
    }

    /// Re-reads certfile, keyfile, cafile and capath and, if they make a valid configuration,
    /// uses it for new connections (connections already established keep theirs). On error the
    /// previous configuration stays in use and the error names the listener, option and file.
    // Called by the SIGHUP reload (wired in server.rs by the reload work).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn reload(&self) -> Result<(), TlsSetupError> {
        let built = build(&self.label, &self.settings)?;
        self.config.store(built.config);
        self.verifier.store(built.verifier);
        info!("{}: TLS certificates reloaded", self.label);
        Ok(())
    }

    /// `listener HOST:PORT`.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// What of the client certificate is the client's username, if anything:
    /// `use_identity_as_username` (the CN) or `use_subject_as_username` (the whole subject).
    pub(crate) fn identity_option(&self) -> Option<&'static str> {
        if self.settings.use_identity_as_username {
            Some("use_identity_as_username")
        } else if self.settings.use_subject_as_username {
            Some("use_subject_as_username")
        } else {
            None
        }
    }

    /// Checks a connected client's certificate `chain` (leaf first) again with the CAs and
    /// CRLs in force now: after a reload, a revoked or no longer trusted certificate fails.
    pub(crate) fn recheck_client(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some(verifier) = self.verifier.load_full() else {
            return Ok(());
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Ok(());
        };
        verifier
            .0
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| crate::tls_identity::explain_handshake_error(&e.to_string()))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }
}

/// Reloads the TLS configuration of every listener in `listeners` (each at most once), keeping
/// the old configuration of any that fails. Returns the errors, one per failed listener.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn reload_all(listeners: &[Arc<TlsListener>]) -> Result<(), Vec<TlsSetupError>> {
    let mut done: Vec<*const TlsListener> = Vec::new();
    let mut errors = Vec::new();
    for l in listeners {
        if done.contains(&Arc::as_ptr(l)) {
            continue;
        }
        done.push(Arc::as_ptr(l));
        if let Err(e) = l.reload() {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Builds a rustls server configuration from a listener's TLS settings.
pub(crate) fn build_server_config(
    label: &str,
    tls: &Tls,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    build(label, tls).map(|b| b.config)
}

/// [`build_server_config`], keeping the client certificate verifier too.
fn build(label: &str, tls: &Tls) -> Result<Built, TlsSetupError> {
    let fail = |option: &str, path: &Path, message: String| {
        TlsSetupError(format!("{label}: {option} {}: {message}", path.display()))
    };
    let provider = Arc::new(provider_with_ciphers(label, tls)?);

    let certs = read_certs(&tls.certfile).map_err(|m| fail("certfile", &tls.certfile, m))?;
    let cas = ca_certificates(label, tls)?;
    // Intermediates missing from certfile come from cafile/capath, as with OpenSSL.
    let certs = match &cas {
        Some(cas) => crate::tls_chain::complete_chain(certs, &cas.all()),
        None => certs,
    };
    let key = PrivateKeyDer::from_pem_file(&tls.keyfile).map_err(|e| {
        fail(
            "keyfile",
            &tls.keyfile,
            pem_error(
                e,
                "no private key found (expected PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY'; \
                 encrypted keys are not supported)",
            ),
        )
    })?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        fail(
            "keyfile",
            &tls.keyfile,
            format!("unusable private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(fail(
                "keyfile",
                &tls.keyfile,
                format!(
                    "does not match certfile {} (the key is not the certificate's private key)",
                    tls.certfile.display()
                ),
            ))
        }
        // The key cannot tell its public key: nothing to compare, rustls accepts it too.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(fail(
                "certfile",
                &tls.certfile,
                format!("unusable certificate: {e}"),
            ))
        }
    }

    let versions: &[&rustls::SupportedProtocolVersion] = match tls.tls_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| {
            TlsSetupError(format!(
                "{label}: tls_version {}: {e}",
                tls.tls_version.name()
            ))
        })?;
    let mut client_verifier = None;
    let builder = match client_roots(label, tls, cas)? {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if tls.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = match &tls.crlfile {
                None => verifier,
                Some(path) => verifier.with_crls(read_crls(path).map_err(|m| {
                    TlsSetupError(format!("{label}: crlfile {}: {m}", path.display()))
                })?),
            };
            let verifier = verifier.build().map_err(|e| {
                TlsSetupError(format!(
                    "{label}: cafile/capath: cannot verify client certificates: {e}"
                ))
            })?;
            client_verifier = Some(Arc::new(ClientVerifier(Arc::clone(&verifier))));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    Ok(Built {
        config: Arc::new(config),
        verifier: client_verifier,
    })
}

/// The *ring* provider with the cipher suites `ciphers` / `ciphers_tls1.3` name (in the order
/// given), or all of them.
fn provider_with_ciphers(
    label: &str,
    tls: &Tls,
) -> Result<rustls::crypto::CryptoProvider, TlsSetupError> {
    let mut provider = rustls::crypto::ring::default_provider();
    let all = std::mem::take(&mut provider.cipher_suites);
    // rustls names the TLS 1.3 suites `TLS13_AES_...` where IANA and OpenSSL say `TLS_AES_...`.
    let iana = |s: &rustls::SupportedCipherSuite| {
        let name = s.suite().as_str().unwrap_or_default();
        match name.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => name.to_owned(),
        }
    };
    let (tls13, tls12): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
    let pick = |option: &str,
                list: &Option<String>,
                parse: fn(&str) -> Result<Vec<&'static str>, String>,
                available: Vec<rustls::SupportedCipherSuite>|
     -> Result<Vec<rustls::SupportedCipherSuite>, TlsSetupError> {
        let Some(list) = list else {
            return Ok(available);
        };
        let names = parse(list).map_err(|e| TlsSetupError(format!("{label}: {option}: {e}")))?;
        Ok(names
            .iter()
            .filter_map(|n| available.iter().find(|s| iana(s) == *n).copied())
            .collect())
    };
    let mut suites = pick(
        "ciphers_tls1.3",
        &tls.ciphers_tls13,
        culex_config::tls_ciphers::parse_tls13,
        tls13,
    )?;
    suites.extend(pick(
        "ciphers",
        &tls.ciphers,
        culex_config::tls_ciphers::parse_tls12,
        tls12,
    )?);
    provider.cipher_suites = suites;
    Ok(provider)
}

/// The certificates of `cafile` and of `capath`, if either is set (files in `capath` that
/// hold no certificate are skipped, like OpenSSL's hashed directories).
struct CaCerts {
    cafile: Vec<CertificateDer<'static>>,
    capath: Vec<CertificateDer<'static>>,
}

impl CaCerts {
    fn all(&self) -> Vec<CertificateDer<'static>> {
        self.cafile.iter().chain(&self.capath).cloned().collect()
    }
}

fn ca_certificates(label: &str, tls: &Tls) -> Result<Option<CaCerts>, TlsSetupError> {
    if tls.cafile.is_none() && tls.capath.is_none() {
        return Ok(None);
    }
    let mut cas = CaCerts {
        cafile: Vec::new(),
        capath: Vec::new(),
    };
    if let Some(cafile) = &tls.cafile {
        cas.cafile = read_certs(cafile)
            .map_err(|m| TlsSetupError(format!("{label}: cafile {}: {m}", cafile.display())))?;
    }
    if let Some(capath) = &tls.capath {
        let fail = |m: String| TlsSetupError(format!("{label}: capath {}: {m}", capath.display()));
        let entries = std::fs::read_dir(capath).map_err(|e| fail(format!("{e}")))?;
        for entry in entries {
            let path = entry.map_err(|e| fail(format!("{e}")))?.path();
            if !path.is_file() {
                continue;
            }
            if let Ok(certs) = read_certs(&path) {
                cas.capath.extend(certs);
            }
        }
    }
    Ok(Some(cas))
}

/// The CA certificates client certificates are checked against, if any.
fn client_roots(
    label: &str,
    tls: &Tls,
    cas: Option<CaCerts>,
) -> Result<Option<RootCertStore>, TlsSetupError> {
    let Some(cas) = cas else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    if let Some(cafile) = &tls.cafile {
        for cert in cas.cafile {
            roots.add(cert).map_err(|e| {
                TlsSetupError(format!(
                    "{label}: cafile {}: not a usable CA certificate: {e}",
                    cafile.display()
                ))
            })?;
        }
    }
    if let Some(capath) = &tls.capath {
        let (found, _) = roots.add_parsable_certificates(cas.capath);
        if found == 0 {
            return Err(TlsSetupError(format!(
                "{label}: capath {}: no CA certificate found in the directory (expected PEM files)",
                capath.display()
            )));
        }
    }
    Ok(Some(roots))
}

/// Every certificate revocation list in a PEM file (`X509 CRL`); an error if there is none.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(e, "no revocation list found"))?;
    if crls.is_empty() {
        return Err("no revocation list found (expected PEM 'BEGIN X509 CRL')".to_owned());
    }
    Ok(crls)
}

/// Every certificate in a PEM file; an error if there is none.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(e, "no certificate found"))?;
    if certs.is_empty() {
        return Err("no certificate found (expected PEM 'BEGIN CERTIFICATE')".to_owned());
    }
    Ok(certs)
}

fn pem_error(e: rustls_pki_types::pem::Error, none: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("cannot read: {e}"),
        rustls_pki_types::pem::Error::NoItemsFound => none.to_owned(),
        other => format!("not a valid PEM file: {other:?}"),
    }
}

/// How a handshake step ended.
enum Step<T> {
    Done(T),
    Failed(String),
    TimedOut,
    Shutdown,
}

/// Runs a handshake step until `deadline`, or until the server shuts down.
async fn step<T, E: fmt::Display>(
    fut: impl Future<Output = Result<T, E>>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Step<T> {
    if *shutdown.borrow() {
        return Step::Shutdown;
    }
    tokio::select! {
        r = tokio::time::timeout_at(deadline, fut) => match r {
            Ok(Ok(v)) => Step::Done(v),
            Ok(Err(e)) => Step::Failed(e.to_string()),
            Err(_) => Step::TimedOut,
        },
        _ = shutdown.changed() => Step::Shutdown,
    }
}

/// Serves one accepted socket: TLS handshake and/or WebSocket upgrade as the listener says (in
/// this task, bounded by [`HANDSHAKE_TIMEOUT`]), then the MQTT connection.
///
/// The future is the connection task itself (built before it is spawned, not an `async fn`, so
/// that it holds no copy of its arguments): `slot` is held until the connection ends.
pub(crate) fn serve_accepted(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<ListenerCtx>,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slot: ConnSlot,
) -> impl Future<Output = ()> + Send {
    if ctx.tls.is_none() && matches!(ctx.protocol, ListenerProtocol::Mqtt) {
        // Plain MQTT over TCP, the common case: served inline, so the connection's future is
        // part of the task's allocation instead of a second one.
        let peer = Peer {
            addr,
            listener: ctx,
            identity: None,
            client_cert: None,
        };
        return Either::Left(connection::serve_in_slot(
            stream,
            peer,
            conn,
            shared,
            shutdown,
            Some(slot),
        ));
    }
    // TLS and WebSocket state is larger: boxed, it does not widen every plain connection's task.
    Either::Right(Box::pin(serve_wrapped(
        stream, addr, ctx, conn, shared, shutdown, slot,
    )))
}

/// [`serve_accepted`] for TLS and/or WebSocket listeners.
async fn serve_wrapped(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<ListenerCtx>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    let _slot = slot;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let peer = Peer {
        addr,
        listener: Arc::clone(&ctx),
        identity: None,
        client_cert: None,
    };
    let Some(tls) = ctx.tls.as_ref() else {
        match ctx.protocol {
            ListenerProtocol::Mqtt => {
                Box::pin(connection::serve(stream, peer, conn, shared, shutdown)).await;
            }
            ListenerProtocol::Websockets => {
                // Handshake futures are large (a WebSocket upgrade over TLS is ~18 KB) and
                // live only briefly: boxing them keeps every idle connection's task small.
                let upgraded =
                    Box::pin(upgrade(stream, &peer, &shared, deadline, &mut shutdown)).await;
                if let Some(ws) = upgraded {
                    Box::pin(connection::serve(ws, peer, conn, shared, shutdown)).await;
                }
            }
        }
        return;
    };
    // A TLS session is several KB; boxed, it does not widen every connection's future (and the
    // handshake's result is scoped so that it is not held beside it).
    let stream = match Box::pin(step(tls.acceptor().accept(stream), deadline, &mut shutdown)).await
    {
        Step::Done(s) => Box::new(s),
        Step::Shutdown => return,
        Step::TimedOut => {
            shared.counters.tls_handshake_failures.inc();
            debug!(peer = %addr, listener = tls.label(), "TLS handshake timed out");
            return;
        }
        Step::Failed(e) => {
            shared.counters.tls_handshake_failures.inc();
            let why = crate::tls_identity::explain_handshake_error(&e.to_string());
            info!(peer = %addr, listener = tls.label(), "TLS handshake failed: {why}");
            return;
        }
    };
    let mut peer = peer;
    // Kept to check the certificate again when the CAs or CRLs are reloaded.
    peer.client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
    if let Some(option) = tls.identity_option() {
        match certificate_identity(&stream, option == "use_subject_as_username") {
            Ok(name) => peer.identity = Some(name),
            Err(why) => {
                shared.counters.auth_failures.inc();
                info!(
                    peer = %addr,
                    listener = tls.label(),
                    "connection refused: {option} is set and {why}"
                );
                return;
            }
        }
    }
    match ctx.protocol {
        ListenerProtocol::Mqtt => {
            Box::pin(connection::serve(stream, peer, conn, shared, shutdown)).await;
        }
        ListenerProtocol::Websockets => {
            let upgraded = Box::pin(upgrade(stream, &peer, &shared, deadline, &mut shutdown)).await;
            if let Some(ws) = upgraded {
                Box::pin(connection::serve(ws, peer, conn, shared, shutdown)).await;
            }
        }
    }
}

/// The subject CN (or, with `whole_subject`, the RFC 2253 subject) of the client's verified
/// certificate.
fn certificate_identity(
    stream: &TlsStream<TcpStream>,
    whole_subject: bool,
) -> Result<String, &'static str> {
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the client sent no certificate")?;
    if whole_subject {
        crate::tls_identity::subject(cert.as_ref()).ok_or("the client certificate has no subject")
    } else {
        crate::tls_identity::common_name(cert.as_ref())
            .ok_or("the client certificate has no subject CN")
    }
}

/// The WebSocket upgrade: checks the subprotocol and answers with the one chosen.
async fn upgrade<S>(
    stream: S,
    peer: &Peer,
    shared: &Shared,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<WsByteStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = usize::try_from(shared.limits.max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(WS_MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let accept =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config));
    match step(accept, deadline, shutdown).await {
        Step::Done(ws) => Some(WsByteStream::new(ws)),
        Step::Shutdown => None,
        Step::TimedOut => {
            shared.counters.websocket_handshake_failures.inc();
            debug!(peer = %peer.addr, listener = %peer.listener.local, "WebSocket upgrade timed out");
            None
        }
        Step::Failed(e) => {
            shared.counters.websocket_handshake_failures.inc();
            info!(peer = %peer.addr, listener = %peer.listener.local, "WebSocket upgrade failed: {e}");
            None
        }
    }
}

/// The upgrade callback: picks `mqtt` or `mqttv3.1` from `Sec-WebSocket-Protocol` and echoes it
/// (MQTT 5.0 [MQTT-6.0.0-3], [MQTT-6.0.0-4]); refuses the upgrade (400) when neither is offered.
#[allow(clippy::result_large_err)] // The signature is tungstenite's.
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    match SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        Some(chosen) => {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(chosen),
            );
            Ok(response)
        }
        None => {
            let mut refusal = ErrorResponse::new(Some(
                "MQTT over WebSocket needs the subprotocol 'mqtt' (or 'mqttv3.1') in Sec-WebSocket-Protocol\n"
                    .to_owned(),
            ));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> Request {
        let mut b = Request::builder().uri("/mqtt");
        for p in protocols {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        b.body(()).expect("request")
    }

    fn chosen(protocols: &[&str]) -> Option<String> {
        choose_subprotocol(&request(protocols), Response::new(()))
            .ok()
            .and_then(|r| {
                r.headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
    }

    #[test]
    fn subprotocols() {
        assert_eq!(chosen(&["mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["mqttv3.1"]).as_deref(), Some("mqttv3.1"));
        assert_eq!(chosen(&["chat, mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["mqttv3.1", "mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["chat"]), None);
        assert_eq!(chosen(&[]), None);
        let refused = choose_subprotocol(&request(&["chat"]), Response::new(()));
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.status()),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    /// A CA-signed server certificate and key (PKCS#8) written to `dir`.
    fn server_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "server");
        let cert = params.self_signed(&key).expect("cert");
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    fn openssl(args: &[&str], dir: &Path) {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs (install it to run this test)");
        assert!(status.success(), "openssl {args:?}");
    }

    #[test]
    fn key_formats_pkcs8_pkcs1_and_sec1() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = server_files(dir.path());
        build_server_config("l", &Tls::new(&cert, &key)).expect("PKCS#8");

        // PKCS#1 RSA ("BEGIN RSA PRIVATE KEY") and SEC1 EC ("BEGIN EC PRIVATE KEY").
        let subj = ["-subj", "/CN=localhost", "-days", "1"];
        openssl(
            &["genrsa", "-traditional", "-out", "rsa.key", "2048"],
            dir.path(),
        );
        openssl(
            &[
                &["req", "-new", "-x509", "-key", "rsa.key", "-out", "rsa.pem"],
                &subj[..],
            ]
            .concat(),
            dir.path(),
        );
        openssl(
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "ec.key",
            ],
            dir.path(),
        );
        openssl(
            &[
                &["req", "-new", "-x509", "-key", "ec.key", "-out", "ec.pem"],
                &subj[..],
            ]
            .concat(),
            dir.path(),
        );
        for (c, k, header) in [
            ("rsa.pem", "rsa.key", "BEGIN RSA PRIVATE KEY"),
            ("ec.pem", "ec.key", "BEGIN EC PRIVATE KEY"),
        ] {
            let key = dir.path().join(k);
            let text = std::fs::read_to_string(&key).expect("read");
            assert!(text.contains(header), "{text}");
            build_server_config("l", &Tls::new(dir.path().join(c), key)).expect(header);
        }
        // Mismatch across formats: the RSA key with the EC certificate.
        let e = build_server_config(
            "listener x:1",
            &Tls::new(dir.path().join("ec.pem"), dir.path().join("rsa.key")),
        )
        .expect_err("mismatch");
        assert!(
            e.to_string().starts_with("listener x:1: keyfile ")
                && e.to_string().contains("does not match certfile"),
            "{e}"
        );
    }

    #[test]
    fn reload_keeps_the_old_config_on_error() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = server_files(dir.path());
        let listener = Listener::new("127.0.0.1", 8883);
        let tls = TlsListener::new(&listener, &Tls::new(&cert, &key)).expect("loads");
        let before = tls.config.load_full();
        tls.reload().expect("reload of good files");
        let reloaded = tls.config.load_full();
        assert!(!Arc::ptr_eq(&before, &reloaded), "a new config is in use");

        std::fs::write(&key, "garbage").expect("break the key");
        let e = tls.reload().expect_err("broken key");
        assert!(
            e.to_string()
                .starts_with("listener 127.0.0.1:8883: keyfile "),
            "{e}"
        );
        assert!(
            Arc::ptr_eq(&reloaded, &tls.config.load_full()),
            "old config kept"
        );
        let all = reload_all(&[Arc::new(tls)]).expect_err("still broken");
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn labels() {
        assert_eq!(
            listener_label(&Listener::new("127.0.0.1", 8883)),
            "listener 127.0.0.1:8883"
        );
        assert_eq!(
            listener_label(&Listener::new("::1", 8883)),
            "listener [::1]:8883"
        );
        assert_eq!(
            listener_label(&Listener::all_interfaces(8883)),
            "listener *:8883"
        );
    }
}
