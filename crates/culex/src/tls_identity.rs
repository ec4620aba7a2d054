//! Who a verified client certificate names, for `use_identity_as_username` (the subject's
//! first CN) and `use_subject_as_username` (the whole subject in RFC 2253 form, as Mosquitto
//! prints it with OpenSSL's `XN_FLAG_RFC2253`: last RDN first, `,` between RDNs, `+` inside
//! one, special characters escaped).

use x509_parser::prelude::{X509Certificate, X509Name};

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
    fn common_name_and_subject_of_a_certificate() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CountryName, "NL");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example, Inc.");
        params.distinguished_name.push(DnType::CommonName, "alice");
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("CN=alice,O=Example\\, Inc.,C=NL")
        );
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(subject(b"not a certificate"), None);
    }
}
