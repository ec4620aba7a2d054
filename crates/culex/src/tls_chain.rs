//! Completing a server's certificate chain from its CA files, as OpenSSL (and so Mosquitto)
//! does: when `certfile` holds only the leaf (or part of the chain) and the issuing
//! intermediates are in `cafile`/`capath`, the missing intermediates are sent too. Clients that
//! trust only the root can then verify the chain; without them they fail with "unable to get
//! local issuer certificate" (OpenSSL) or `UnknownIssuer` (rustls).
//!
//! Issuers are found by name (the issuer's raw subject equals the certificate's raw issuer),
//! preferring one whose Subject Key Identifier matches the Authority Key Identifier. Self-signed
//! roots are not sent (a client must already have them to trust the chain).

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::X509Certificate;

/// At most this many certificates are added.
const MAX_ADDED: usize = 8;

/// `chain` (leaf first) with the intermediates from `pool` that complete it appended, in order.
pub(crate) fn complete_chain(
    mut chain: Vec<CertificateDer<'static>>,
    pool: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    for _ in 0..MAX_ADDED {
        let Some(last) = chain.last() else {
            break;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(last) else {
            break;
        };
        if self_signed(&cert) {
            break;
        }
        let Some(issuer) = find_issuer(&cert, pool) else {
            break;
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(issuer) else {
            break;
        };
        if self_signed(&parsed) || chain.iter().any(|c| c == issuer) {
            break;
        }
        chain.push(issuer.clone());
    }
    chain
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

/// The certificate in `pool` that issued `cert`: its subject is `cert`'s issuer; among several,
/// the one whose key identifier matches `cert`'s authority key identifier.
fn find_issuer<'p>(
    cert: &X509Certificate<'_>,
    pool: &'p [CertificateDer<'static>],
) -> Option<&'p CertificateDer<'static>> {
    let wanted_key = authority_key_id(cert);
    let mut by_name = None;
    for candidate in pool {
        let Ok((_, c)) = x509_parser::parse_x509_certificate(candidate) else {
            continue;
        };
        if c.subject().as_raw() != cert.issuer().as_raw() {
            continue;
        }
        match (&wanted_key, subject_key_id(&c)) {
            (Some(want), Some(have)) if *want == have => return Some(candidate),
            (Some(_), Some(_)) => {}
            _ => {
                by_name.get_or_insert(candidate);
            }
        }
    }
    by_name
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}
