//! Opening the byte stream a client session runs over: TCP, TLS over TCP, and WebSocket over
//! either. Every variant ends up as one [`BoxStream`].

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;
use crate::ws::WsByteStream;

/// A bidirectional byte stream the codec can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// A boxed [`ByteStream`]: TCP, TLS, WebSocket, or an in-memory pipe in tests.
pub type BoxStream = Box<dyn ByteStream>;

/// TLS settings.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of trusted CA certificates; `None` uses the platform's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require client certificates.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Accept a server certificate whose names do not match the host (Mosquitto's
    /// `--insecure`): the chain is still verified against the trusted CAs.
    pub insecure: bool,
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
    /// Server name for SNI and certificate checks; `None` uses the host.
    pub server_name: Option<String>,
}

/// WebSocket settings.
#[derive(Debug, Clone)]
pub struct WebSocketOptions {
    /// Request path, `/mqtt` by default.
    pub path: String,
}

impl Default for WebSocketOptions {
    fn default() -> Self {
        WebSocketOptions {
            path: "/mqtt".into(),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS, if enabled.
    pub tls: Option<TlsOptions>,
    /// WebSocket, if enabled (over TLS when `tls` is set too).
    pub websocket: Option<WebSocketOptions>,
    /// Time allowed for the TCP connect and the TLS and WebSocket handshakes.
    pub connect_timeout: Duration,
    /// Disable Nagle's algorithm (on by default: MQTT packets are small and latency-bound).
    pub nodelay: bool,
}

impl TransportOptions {
    /// Plain TCP to `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        TransportOptions {
            host: host.into(),
            port,
            tls: None,
            websocket: None,
            connect_timeout: Duration::from_secs(30),
            nodelay: true,
        }
    }
}

/// Opens the transport: TCP connect, then the TLS handshake and the WebSocket upgrade as
/// configured, all within `connect_timeout`.
pub async fn open(options: &TransportOptions) -> Result<BoxStream, ClientError> {
    tokio::time::timeout(options.connect_timeout, open_inner(options))
        .await
        .map_err(|_| ClientError::Timeout("connecting"))?
}

async fn open_inner(options: &TransportOptions) -> Result<BoxStream, ClientError> {
    let tcp = TcpStream::connect((options.host.as_str(), options.port)).await?;
    if options.nodelay {
        tcp.set_nodelay(true)?;
    }
    let stream: BoxStream = match &options.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = tls.server_name.as_deref().unwrap_or(&options.host);
            tls_handshake(tcp, tls_config(tls)?, name).await?
        }
    };
    match &options.websocket {
        None => Ok(stream),
        Some(ws) => websocket(stream, options, ws).await,
    }
}

/// Describes a TLS handshake failure, unwrapping rustls' error from the io::Error.
/// The TLS client handshake over `tcp` with `config`, checking the certificate against `name`;
/// a failure reads "handshake failed: <the rustls reason>".
pub async fn tls_handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<BoxStream, ClientError> {
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|e| ClientError::Tls(format!("invalid server name {name:?}: {e}")))?;
    let stream = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| ClientError::Tls(tls_error_text(&e)))?;
    Ok(Box::new(stream))
}

fn tls_error_text(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls_error) => format!("handshake failed: {rustls_error}"),
        None => format!("handshake failed: {e}"),
    }
}

async fn websocket(
    stream: BoxStream,
    options: &TransportOptions,
    ws: &WebSocketOptions,
) -> Result<BoxStream, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let scheme = if options.tls.is_some() { "wss" } else { "ws" };
    let host = if options.host.contains(':') {
        format!("[{}]", options.host)
    } else {
        options.host.clone()
    };
    let path = if ws.path.starts_with('/') {
        ws.path.clone()
    } else {
        format!("/{}", ws.path)
    };
    let url = format!("{scheme}://{host}:{}{path}", options.port);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(format!("invalid URL {url}: {e}")))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws_stream, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ClientError::WebSocket(format!("handshake with {url} failed: {e}")))?;
    Ok(Box::new(WsByteStream::new(ws_stream)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Adds every certificate of a PEM CA file to `roots`; errors name the file.
pub fn add_ca_file(roots: &mut RootCertStore, path: &std::path::Path) -> Result<(), ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ClientError::Config(format!("cannot read CA file {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("invalid CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| {
            ClientError::Config(format!("invalid CA certificate in {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// Builds the rustls client configuration for `tls`.
pub fn tls_config(tls: &TlsOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => add_ca_file(&mut roots, path)?,
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                // Skip platform certificates rustls cannot parse, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientError::Config(
                    "no trusted CA certificates found on this system; use --cafile".into(),
                ));
            }
        }
    }
    tls_config_with_roots(roots, tls, rustls::DEFAULT_VERSIONS)
}

/// Builds the rustls client configuration for `tls` with the given trusted `roots` (its
/// `ca_file` is not read) and TLS protocol `versions`: for callers that assemble their own trust
/// store, e.g. the platform's roots plus extra CA files, as bridges do.
pub fn tls_config_with_roots(
    roots: RootCertStore,
    tls: &TlsOptions,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, ClientError> {
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let builder = if tls.insecure {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IgnoreHostname { inner }))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| {
                    ClientError::Config(format!("cannot read certificate {}: {e}", cert.display()))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ClientError::Config(format!("invalid certificate {}: {e}", cert.display()))
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ClientError::Config(format!("cannot read key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Config(
                "a client certificate needs both a certificate file and a key file".into(),
            ))
        }
    };
    config.alpn_protocols = tls.alpn.clone();
    Ok(Arc::new(config))
}

/// Verifies the chain like the default verifier but accepts a certificate issued for another
/// name (`--insecure`, as in Mosquitto's clients).
#[derive(Debug)]
struct IgnoreHostname {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
