//! The TLS cipher suite names `ciphers` and `ciphers_tls1.3` accept: the suites rustls offers
//! (with the *ring* provider), by their OpenSSL name (what Mosquitto configurations use) and by
//! their IANA name. Other names, OpenSSL's keywords (`HIGH`, `DEFAULT`) and exclusions (`!MD5`)
//! included, are refused with the list of what is supported: rustls has no weak suites to
//! exclude, so such strings would only hide what is offered.

/// TLS 1.2 suites: (OpenSSL name, IANA name).
pub const TLS12: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// TLS 1.3 suites (OpenSSL uses the IANA names for these).
pub const TLS13: &[&str] = &[
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The IANA names of the TLS 1.2 suites in `list` (`:`, `,` or space separated), in order.
pub fn parse_tls12(list: &str) -> Result<Vec<&'static str>, String> {
    parse(list, |name| {
        TLS12
            .iter()
            .find(|(openssl, iana)| name == *openssl || name == *iana)
            .map(|(_, iana)| *iana)
    })
    .map_err(|bad| {
        let names: Vec<&str> = TLS12.iter().map(|(o, _)| *o).collect();
        format!(
            "unknown TLS 1.2 cipher suite '{bad}'; supported (OpenSSL or IANA names): {}",
            names.join(", ")
        )
    })
}

/// The names of the TLS 1.3 suites in `list`, in order.
pub fn parse_tls13(list: &str) -> Result<Vec<&'static str>, String> {
    parse(list, |name| TLS13.iter().find(|n| **n == name).copied()).map_err(|bad| {
        format!(
            "unknown TLS 1.3 cipher suite '{bad}'; supported: {}",
            TLS13.join(", ")
        )
    })
}

fn parse(
    list: &str,
    known: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for name in list
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let suite = known(name).ok_or_else(|| name.to_owned())?;
        if !out.contains(&suite) {
            out.push(suite);
        }
    }
    if out.is_empty() {
        return Err(list.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_and_unknown_ones_are_refused() {
        assert_eq!(
            parse_tls12("ECDHE-RSA-AES128-GCM-SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
            Ok(vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            ])
        );
        let e = parse_tls12("HIGH:!aNULL").unwrap_err();
        assert!(e.starts_with("unknown TLS 1.2 cipher suite 'HIGH'"), "{e}");
        assert!(e.contains("ECDHE-RSA-AES256-GCM-SHA384"), "{e}");
        assert_eq!(
            parse_tls13("TLS_CHACHA20_POLY1305_SHA256"),
            Ok(vec!["TLS_CHACHA20_POLY1305_SHA256"])
        );
        assert!(parse_tls13("TLS_AES_128_CCM_SHA256").is_err());
        assert!(parse_tls13("").is_err());
    }
}
