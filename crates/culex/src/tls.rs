//! TLS listeners' server configurations (rustls), built at startup from the listener's PEM
//! files (errors name the listener, the option and the file) and kept in an [`ArcSwap`], so
//! [`TlsListener::reload`] can replace them (SIGHUP) without touching connections in progress;
//! a reload that fails keeps the previous configuration.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use culex_config::{Listener, Tls, TlsVersion};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::info;

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

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
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

#[cfg(test)]
mod tests {
    use super::*;

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
