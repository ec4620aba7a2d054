//! What client certificates say and why one is refused.
//!
//! Who a verified client certificate names, for `use_identity_as_username` (the subject's
//! first CN) and `use_subject_as_username` (the whole subject in RFC 2253 form, as Mosquitto
//! prints it with OpenSSL's `XN_FLAG_RFC2253`: last RDN first, `,` between RDNs, `+` inside
//! one, special characters escaped).

use x509_parser::prelude::{X509Certificate, X509Name};

/// How to make a client certificate rustls accepts, for the log and `--check`. rustls (through
/// webpki) accepts only X.509 version 3; `openssl x509 -req` without `-extfile` (and the
/// example in Mosquitto's TLS manual) makes version 1. Culex does not verify version 1
/// certificates itself: it would mean a second, hand-written path-validation and handshake
/// signature check beside rustls's, for certificates any CA can reissue in one command.
pub(crate) const V1_HINT: &str = concat!(
    "client certificates must be X.509 version 3; `openssl x509 -req` without -extfile makes ",
    "version 1, which is refused: reissue it with extensions, e.g. `openssl x509 -req -in ",
    "client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 365 -extfile ",
    "client.ext` with client.ext holding `basicConstraints=CA:FALSE` and ",
    "`extendedKeyUsage=clientAuth`"
);

/// A failed TLS handshake explained: a version 1 client certificate gets [`V1_HINT`].
pub(crate) fn explain_handshake_error(error: &str) -> String {
    if error.contains("UnsupportedCertVersion") {
        format!("{error}: the client certificate is X.509 version 1; {V1_HINT}")
    } else {
        error.to_owned()
    }
}

/// The first subject CN of a DER certificate.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The subject of a DER certificate in RFC 2253 form, e.g. `CN=alice,O=Example,C=NL`.
pub(crate) fn subject(der: &[u8]) -> Option<String> {
    let (_, cert): (_, X509Certificate<'_>) = x509_parser::parse_x509_certificate(der).ok()?;
    rfc2253(cert.subject())
}

fn rfc2253(name: &X509Name<'_>) -> Option<String> {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in name.iter() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let key = match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(abbrev) => abbrev.to_owned(),
                Err(_) => oid.to_id_string(),
            };
            let value = attr.as_str().ok()?;
            parts.push(format!("{key}={}", escape(value)));
        }
        // OpenSSL reverses the whole list of attributes, so within a multi-valued RDN too.
        parts.reverse();
        rdns.push(parts.join("+"));
    }
    if rdns.is_empty() {
        return None;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// RFC 2253 section 2.4 escaping.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn version_1_certificates_are_explained() {
        let e = explain_handshake_error(
            "invalid peer certificate: Other(OtherError(UnsupportedCertVersion))",
        );
        assert!(
            e.contains("X.509 version 1") && e.contains("-extfile"),
            "{e}"
        );
        assert_eq!(explain_handshake_error("other"), "other");
    }

    /// Our subject string is what OpenSSL prints with `-nameopt RFC2253` (what Mosquitto
    /// uses), for a certificate OpenSSL made.
    #[test]
    fn common_name_and_subject_of_a_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl runs (install it to run this test)");
            assert!(out.status.success(), "openssl {args:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            "/C=NL/O=Example, Inc./OU=Lab+L=Delft/CN=alice",
        ]);
        let printed = run(&[
            "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
        ]);
        let expected = printed.trim().trim_start_matches("subject=").to_owned();
        run(&["x509", "-in", "c.pem", "-outform", "DER", "-out", "c.der"]);
        let der = std::fs::read(dir.path().join("c.der")).expect("der");
        assert_eq!(subject(&der), Some(expected), "as OpenSSL prints it");
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        let mut c = CertificateParams::new(Vec::<String>::new()).unwrap();
        c.distinguished_name.push(DnType::CommonName, "bob");
        let cert = c.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(subject(cert.der()).as_deref(), Some("CN=bob"));
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(subject(b"not a certificate"), None);
    }
}
