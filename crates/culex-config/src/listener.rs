//! A listener of the configuration: its address and protocol, and its TLS settings.

use serde::Deserialize;

use super::*;

/// A TCP listener: plain MQTT, MQTT over TLS, or MQTT over WebSocket (with
/// or without TLS).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address (IP address or host name) to bind to. `None` means all
    /// interfaces, i.e. both `0.0.0.0` and `::`.
    #[serde(default)]
    pub host: Option<String>,
    /// TCP port. `0` is allowed and asks the operating system for an
    /// ephemeral port (useful in tests).
    pub port: u16,
    /// What is spoken on the connection: MQTT directly (the default) or MQTT
    /// over WebSocket (mosquitto.conf `protocol websockets`).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS settings; `None` for a plain-text listener.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// This listener's own authentication settings. Only allowed (and then
    /// always present after loading a file) when
    /// [`Config::per_listener_settings`] is `true`; use
    /// [`Config::security_for`] rather than reading it directly. Stored by the loader
    /// through the option table, not by serde.
    #[serde(skip)]
    pub security: Option<Security>,
    /// `socket_domain ipv4|ipv6`: without a host, listen only on that family (by default
    /// both `0.0.0.0` and `::`).
    #[serde(default)]
    pub socket_domain: Option<SocketDomain>,
    /// `bind_interface NAME`: accept connections only on that network interface
    /// (`SO_BINDTODEVICE`; needs root or `CAP_NET_RAW`, as in Mosquitto).
    #[serde(default)]
    pub bind_interface: Option<String>,
    /// `mount_point PREFIX`: isolates this listener's clients: PREFIX is put in front of every
    /// topic they publish, subscribe to or name in a will, and taken off the topics they
    /// receive (as in Mosquitto). A topic name, no wildcards.
    #[serde(default)]
    pub mount_point: Option<String>,
}

/// An address family for `socket_domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketDomain {
    /// IPv4 only. Written `ipv4`.
    Ipv4,
    /// IPv6 only. Written `ipv6`.
    Ipv6,
}

impl SocketDomain {
    /// Parses `ipv4` or `ipv6`.
    pub fn parse(text: &str) -> Result<SocketDomain, String> {
        match text {
            "ipv4" => Ok(SocketDomain::Ipv4),
            "ipv6" => Ok(SocketDomain::Ipv6),
            other => Err(format!("invalid value '{other}'; allowed: ipv4 or ipv6")),
        }
    }
}

impl Listener {
    /// A plain MQTT listener on `host` (an IP address or host name) and
    /// `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Listener {
        Listener {
            host: Some(host.into()),
            ..Listener::all_interfaces(port)
        }
    }

    /// A plain MQTT listener on all interfaces (IPv4 and IPv6) on `port`.
    pub fn all_interfaces(port: u16) -> Listener {
        Listener {
            host: None,
            port,
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            security: None,
            socket_domain: None,
            bind_interface: None,
            mount_point: None,
        }
    }

    /// The loopback listeners Culex (like Mosquitto 2) uses when nothing else
    /// is configured: `127.0.0.1:port` and `[::1]:port`.
    pub fn loopback(port: u16) -> Vec<Listener> {
        vec![Listener::new("127.0.0.1", port), Listener::new("::1", port)]
    }

    /// This listener with `protocol`.
    pub fn with_protocol(mut self, protocol: ListenerProtocol) -> Listener {
        self.protocol = protocol;
        self
    }

    /// This listener with TLS settings.
    pub fn with_tls(mut self, tls: Tls) -> Listener {
        self.tls = Some(tls);
        self
    }
}

/// What a listener speaks (mosquitto.conf `protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT directly over TCP (or TLS). mosquitto.conf: `protocol mqtt`.
    #[default]
    Mqtt,
    /// MQTT over WebSocket (RFC 6455, subprotocol `mqtt` or `mqttv3.1`),
    /// any path. mosquitto.conf: `protocol websockets`.
    Websockets,
}

impl ListenerProtocol {
    /// The name used in both syntaxes: `mqtt` or `websockets`.
    pub fn name(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Websockets => "websockets",
        }
    }
}

/// TLS settings of a listener. The files are PEM; relative paths are
/// relative to the broker's working directory (as in Mosquitto). Loading
/// checks that they can be read; the broker parses them at startup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The server's certificate chain (PEM, the server certificate first).
    pub certfile: PathBuf,
    /// The private key of the server certificate (PEM: PKCS#8, PKCS#1 RSA or
    /// SEC1 EC).
    pub keyfile: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against.
    /// Without `cafile` or `capath` clients are not asked for a certificate.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// A directory of CA certificates (PEM files), used like `cafile`.
    #[serde(default)]
    pub capath: Option<PathBuf>,
    /// Certificate revocation lists (PEM `X509 CRL`) issued by the CAs: client certificates
    /// they revoke are refused. Re-read on SIGHUP. Needs `cafile` or `capath`.
    #[serde(default)]
    pub crlfile: Option<PathBuf>,
    /// Whether clients must present a certificate signed by one of the CAs.
    /// Needs `cafile` or `capath`. Default `false`: a client certificate is
    /// then verified if one is presented, but not required.
    #[serde(default)]
    pub require_certificate: bool,
    /// Whether the subject CN of the client certificate is used as the
    /// client's username (the MQTT username is then ignored). Needs `cafile`
    /// or `capath`; clients without a certificate are refused.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// Whether the whole subject of the client certificate, in RFC 2253 form as Mosquitto
    /// prints it (`CN=alice,O=Example,C=NL`), is the client's username. Needs `cafile` or
    /// `capath`; not together with `use_identity_as_username`.
    #[serde(default)]
    pub use_subject_as_username: bool,
    /// `ciphers`: the TLS 1.2 cipher suites offered, OpenSSL or IANA names separated by `:`
    /// (e.g. `ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384`); default: all that
    /// rustls supports (see [`tls_ciphers::TLS12`]).
    #[serde(default)]
    pub ciphers: Option<String>,
    /// `ciphers_tls1.3` (TOML `ciphers_tls13`): the TLS 1.3 cipher suites offered (e.g.
    /// `TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256`); default: all three.
    #[serde(default)]
    pub ciphers_tls13: Option<String>,
    /// The lowest TLS version accepted. Default TLS 1.2.
    #[serde(default)]
    pub tls_version: TlsVersion,
}

impl Tls {
    /// TLS with a certificate and key, no client certificates, TLS 1.2 or
    /// later.
    pub fn new(certfile: impl Into<PathBuf>, keyfile: impl Into<PathBuf>) -> Tls {
        Tls {
            certfile: certfile.into(),
            keyfile: keyfile.into(),
            cafile: None,
            capath: None,
            crlfile: None,
            require_certificate: false,
            use_identity_as_username: false,
            use_subject_as_username: false,
            ciphers: None,
            ciphers_tls13: None,
            tls_version: TlsVersion::default(),
        }
    }
}

/// A minimum TLS version (`tls_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3). Written `tlsv1.2`.
    #[default]
    #[serde(rename = "tlsv1.2")]
    V1_2,
    /// TLS 1.3 only. Written `tlsv1.3`.
    #[serde(rename = "tlsv1.3")]
    V1_3,
}

impl TlsVersion {
    /// The name used in both syntaxes: `tlsv1.2` or `tlsv1.3`.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "tlsv1.2",
            TlsVersion::V1_3 => "tlsv1.3",
        }
    }

    /// Parses `tlsv1.2` or `tlsv1.3`; the error says what is allowed.
    pub fn parse(text: &str) -> Result<TlsVersion, String> {
        match text {
            "tlsv1.2" => Ok(TlsVersion::V1_2),
            "tlsv1.3" => Ok(TlsVersion::V1_3),
            "tlsv1" | "tlsv1.1" => Err(format!(
                "'{text}' is not supported: TLS versions before 1.2 are insecure; allowed: tlsv1.2 or tlsv1.3"
            )),
            other => Err(format!(
                "invalid value '{other}'; allowed: tlsv1.2 or tlsv1.3"
            )),
        }
    }
}
