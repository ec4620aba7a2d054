//! Test certificates: a CA, a server certificate for `localhost` and `127.0.0.1`, client
//! certificates (one from the CA, one from another CA), written as PEM files in a temporary
//! directory, plus rustls client configurations that use them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use culex_config::Tls;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The CN of [`Pki::CLIENT_CERT`].
pub const CLIENT_CN: &str = "alice";

/// Serial number of the client certificates (each CA issues one).
const CLIENT_SERIAL: u64 = 1001;

/// Certificates and keys in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The CA certificate.
    pub const CA: &'static str = "ca.pem";
    /// The server certificate (SANs `localhost` and `127.0.0.1`), signed by the CA.
    pub const SERVER_CERT: &'static str = "server.pem";
    /// The server certificate's key (PKCS#8).
    pub const SERVER_KEY: &'static str = "server.key";
    /// A client certificate with CN [`CLIENT_CN`], signed by the CA.
    pub const CLIENT_CERT: &'static str = "client.pem";
    /// Its key.
    pub const CLIENT_KEY: &'static str = "client.key";
    /// Another CA.
    pub const OTHER_CA: &'static str = "other-ca.pem";
    /// A client certificate (CN `mallory`) signed by the other CA.
    pub const OTHER_CLIENT_CERT: &'static str = "other-client.pem";
    /// Its key.
    pub const OTHER_CLIENT_KEY: &'static str = "other-client.key";
    /// A key that belongs to no certificate.
    pub const UNRELATED_KEY: &'static str = "unrelated.key";
    /// A revocation list of the CA that revokes the client certificate (`CLIENT_CERT`).
    pub const CRL_REVOKING_CLIENT: &'static str = "revoking-client.crl";
    /// A revocation list of the CA that revokes nothing.
    pub const CRL_EMPTY: &'static str = "empty.crl";
    /// A second hierarchy with an intermediate: the root CA certificate.
    pub const CHAIN_ROOT: &'static str = "chain-root.pem";
    /// The intermediate CA certificate (signed by the root) followed by the root: what a
    /// Mosquitto `cafile` of such a hierarchy holds.
    pub const CHAIN_CAS: &'static str = "chain-cas.pem";
    /// A server certificate (localhost, 127.0.0.1) signed by the intermediate: the leaf alone.
    pub const CHAIN_LEAF: &'static str = "chain-leaf.pem";
    /// Its key.
    pub const CHAIN_LEAF_KEY: &'static str = "chain-leaf.key";

    /// Generates everything.
    pub fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, text: &str| -> Result<()> {
            std::fs::write(dir.path().join(name), text).with_context(|| format!("write {name}"))
        };

        let (ca_pem, ca) = make_ca("Culex test CA")?;
        write(Self::CA, &ca_pem)?;
        let (other_pem, other) = make_ca("Another CA")?;
        write(Self::OTHER_CA, &other_pem)?;

        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        write(
            Self::SERVER_CERT,
            &server.signed_by(&server_key, &ca)?.pem(),
        )?;
        write(Self::SERVER_KEY, &server_key.serialize_pem())?;

        for (cn, issuer, cert, key) in [
            (CLIENT_CN, &ca, Self::CLIENT_CERT, Self::CLIENT_KEY),
            (
                "mallory",
                &other,
                Self::OTHER_CLIENT_CERT,
                Self::OTHER_CLIENT_KEY,
            ),
        ] {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.serial_number = Some(SerialNumber::from(CLIENT_SERIAL));
            let k = KeyPair::generate()?;
            write(cert, &params.signed_by(&k, issuer)?.pem())?;
            write(key, &k.serialize_pem())?;
        }
        write(Self::UNRELATED_KEY, &KeyPair::generate()?.serialize_pem())?;
        for (file, revoked) in [
            (Self::CRL_REVOKING_CLIENT, vec![CLIENT_SERIAL]),
            (Self::CRL_EMPTY, vec![]),
        ] {
            let crl = CertificateRevocationListParams {
                this_update: date_time_ymd(2025, 1, 1),
                next_update: date_time_ymd(2099, 1, 1),
                crl_number: SerialNumber::from(1),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .into_iter()
                    .map(|serial| RevokedCertParams {
                        serial_number: SerialNumber::from(serial),
                        revocation_time: date_time_ymd(2025, 1, 1),
                        reason_code: Some(RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&ca)?;
            write(file, &crl.pem()?)?;
        }

        let (root_pem, root) = make_ca("Culex chain root")?;
        write(Self::CHAIN_ROOT, &root_pem)?;
        let (inter_pem, inter) = make_ca_signed_by("Culex chain intermediate", &root)?;
        write(Self::CHAIN_CAS, &format!("{inter_pem}{root_pem}"))?;
        let leaf_key = KeyPair::generate()?;
        write(
            Self::CHAIN_LEAF,
            &server.signed_by(&leaf_key, &inter)?.pem(),
        )?;
        write(Self::CHAIN_LEAF_KEY, &leaf_key.serialize_pem())?;
        Ok(Pki { dir })
    }

    /// The path of one of the files (`Pki::CA`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The contents of one of the files.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(name)).with_context(|| format!("read {name}"))
    }

    /// Server TLS settings: the server certificate and key, no client certificates.
    pub fn server_tls(&self) -> Tls {
        Tls::new(self.path(Self::SERVER_CERT), self.path(Self::SERVER_KEY))
    }

    /// Server TLS settings that verify client certificates against the CA.
    pub fn server_tls_with_ca(&self, require_certificate: bool) -> Tls {
        Tls {
            cafile: Some(self.path(Self::CA)),
            require_certificate,
            ..self.server_tls()
        }
    }

    /// A rustls client configuration trusting the CA, with an optional client certificate
    /// (`(cert file, key file)`) and the given protocol versions (empty: rustls's defaults).
    pub fn client_config(
        &self,
        client_cert: Option<(&str, &str)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<ClientConfig>> {
        self.client_config_trusting(Self::CA, client_cert, versions)
    }

    /// [`Pki::client_config`] trusting the CA certificates in file `ca` instead.
    pub fn client_config_trusting(
        &self,
        ca: &str,
        client_cert: Option<(&str, &str)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path(ca))? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider);
        let builder = if versions.is_empty() {
            builder.with_safe_default_protocol_versions()?
        } else {
            builder.with_protocol_versions(versions)?
        }
        .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(self.path(cert))?
                    .collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_file(self.path(key))?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(Arc::new(config))
    }

    /// The server name clients verify: `localhost`.
    pub fn server_name() -> Result<ServerName<'static>> {
        Ok(ServerName::try_from("localhost")?)
    }
}

/// A CA certificate signed by `issuer`.
fn make_ca_signed_by(
    cn: &str,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(String, Issuer<'static, KeyPair>)> {
    let params = ca_params(cn)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn ca_params(cn: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn make_ca(cn: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let params = ca_params(cn)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}
