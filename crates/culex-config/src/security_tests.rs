//! TLS, WebSocket and security options: each in both syntaxes, which must load to the same
//! configuration, and each problem reported with its file, line and option.

use std::path::{Path, PathBuf};

use crate::test_util::TempConfig;
use crate::{
    mosquitto, toml_format, Config, ConfigError, Listener, ListenerProtocol, Loaded, Security, Tls,
    TlsVersion,
};

/// A directory with a configuration file and some readable files for the options to name.
struct Fixture {
    dir: TempConfig,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempConfig::new();
        for name in [
            "cert.pem", "key.pem", "ca.pem", "passwd", "acl", "passwd2", "acl2",
        ] {
            dir.file(name, "x\n");
        }
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        Fixture { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `{d}` in `text` becomes the directory.
    fn expand(&self, text: &str) -> String {
        text.replace("{d}", &self.dir.path().display().to_string())
    }

    fn conf(&self, text: &str) -> Result<Loaded, ConfigError> {
        mosquitto::load(&self.dir.file("culex.conf", &self.expand(text)))
    }

    fn toml(&self, text: &str) -> Result<Loaded, ConfigError> {
        toml_format::load(&self.dir.file("culex.toml", &self.expand(text)), vec![])
    }

    fn toml_env(&self, text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), self.expand(v)))
            .collect();
        toml_format::load(&self.dir.file("culex.toml", &self.expand(text)), env)
    }

    /// Both load, to the same configuration, which is returned.
    fn both(&self, conf: &str, toml: &str) -> Config {
        let a = self.conf(conf).unwrap_or_else(|e| panic!("conf: {e}"));
        let b = self.toml(toml).unwrap_or_else(|e| panic!("toml: {e}"));
        assert_eq!(a.config, b.config);
        a.config
    }

    /// The errors of a result, one per line, directory stripped.
    fn errors(&self, result: Result<Loaded, ConfigError>) -> String {
        match result {
            Ok(loaded) => panic!("should fail, got {:?}", loaded.config),
            Err(e) => self.dir.strip(&e.to_string()),
        }
    }
}

#[test]
fn tls_listener_both_syntaxes() {
    let f = Fixture::new();
    let c = f.both(
        "listener 8883 127.0.0.1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\ncafile {d}/ca.pem\n\
         capath {d}/certs\ncrlfile {d}/ca.pem\nrequire_certificate true\nuse_identity_as_username true\n\
         tls_version tlsv1.3\nlistener 1883\n",
        "[[listeners]]\nhost = \"127.0.0.1\"\nport = 8883\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\n\
         keyfile = \"{d}/key.pem\"\ncafile = \"{d}/ca.pem\"\ncapath = \"{d}/certs\"\n\
         crlfile = \"{d}/ca.pem\"\nrequire_certificate = true\nuse_identity_as_username = true\ntls_version = \"tlsv1.3\"\n\
         [[listeners]]\nport = 1883\n",
    );
    assert_eq!(
        c.listeners,
        vec![
            Listener::new("127.0.0.1", 8883).with_tls(Tls {
                cafile: Some(f.p("ca.pem")),
                capath: Some(f.p("certs")),
                crlfile: Some(f.p("ca.pem")),
                require_certificate: true,
                use_identity_as_username: true,
                tls_version: TlsVersion::V1_3,
                ..Tls::new(f.p("cert.pem"), f.p("key.pem"))
            }),
            Listener::all_interfaces(1883),
        ]
    );
    // Defaults: no client certificates, TLS 1.2 and later.
    let c = f.both(
        "listener 8883\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\n",
        "listeners = [{ port = 8883, tls = { certfile = \"{d}/cert.pem\", keyfile = \"{d}/key.pem\" } }]\n",
    );
    assert_eq!(
        c.listeners[0].tls,
        Some(Tls::new(f.p("cert.pem"), f.p("key.pem")))
    );
    assert_eq!(c.listeners[0].protocol, ListenerProtocol::Mqtt);
}

#[test]
fn websockets_listener_both_syntaxes() {
    let f = Fixture::new();
    let c = f.both(
        "listener 9001\nprotocol websockets\nlistener 9443\nprotocol websockets\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\nlistener 1883\nprotocol mqtt\n",
        "[[listeners]]\nport = 9001\nprotocol = \"websockets\"\n[[listeners]]\nport = 9443\nprotocol = \"websockets\"\n\
         [listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\n[[listeners]]\nport = 1883\nprotocol = \"mqtt\"\n",
    );
    let protocols: Vec<_> = c.listeners.iter().map(|l| l.protocol).collect();
    assert_eq!(
        protocols,
        [
            ListenerProtocol::Websockets,
            ListenerProtocol::Websockets,
            ListenerProtocol::Mqtt
        ]
    );
    assert!(c.listeners[1].tls.is_some());
    assert!(f.errors(f.conf("listener 1\nprotocol http\n")).contains(
        "culex.conf:2: option 'protocol': invalid value 'http'; allowed: mqtt or websockets"
    ));
    assert!(f
        .errors(f.toml("[[listeners]]\nport = 1\nprotocol = \"ws\"\n"))
        .contains("culex.toml:3: option 'listeners[0].protocol': invalid value \"ws\""));
}

#[test]
fn default_listener_takes_options_before_any_listener_line() {
    let f = Fixture::new();
    let c = f
        .conf("certfile {d}/cert.pem\nkeyfile {d}/key.pem\nport 8883\nlistener 1883\n")
        .expect("loads")
        .config;
    assert!(c.listeners[0].tls.is_some());
    assert_eq!(c.listeners[0].port, 8883);
    assert!(c.listeners[1].tls.is_none());
    // Without a default listener there is nothing for them to apply to.
    assert_eq!(
        f.errors(f.conf("protocol websockets\nlistener 1883\n")),
        "culex.conf:1: option 'protocol' applies to a listener, but there is no `listener` line \
         before it and no default listener (`port`); put it after the `listener` line it is for"
    );
}

#[test]
fn tls_option_errors() {
    let f = Fixture::new();
    let conf = |text: &str| f.errors(f.conf(text));
    let toml = |text: &str| f.errors(f.toml(text));

    assert_eq!(
        conf("listener 8883\ncertfile {d}/cert.pem\n"),
        "culex.conf:2: option 'certfile': certfile is given without keyfile; a TLS listener needs both"
    );
    assert_eq!(
        conf("listener 8883\nkeyfile {d}/key.pem\n"),
        "culex.conf:2: option 'keyfile': keyfile is given without certfile; a TLS listener needs both"
    );
    assert!(conf("listener 8883\ncafile {d}/ca.pem\n").starts_with(
        "culex.conf:2: 'cafile' is a TLS option, but this listener has no certfile and keyfile"
    ));
    assert_eq!(
        toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\n"),
        "culex.toml:3: option 'listeners[0].tls.keyfile': certfile is given without keyfile; a TLS listener needs both"
    );
    assert!(
        toml("[[listeners]]\nport = 1\n[listeners.tls]\nkeyfile = \"{d}/key.pem\"\n")
            .contains("keyfile is given without certfile")
    );

    // require_certificate and use_identity_as_username need a CA.
    let e = conf(
        "listener 8883\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\nrequire_certificate true\n",
    );
    assert_eq!(
        e,
        "culex.conf:4: option 'require_certificate': require_certificate needs cafile (or capath): \
         the CA certificates that client certificates are verified against"
    );
    let e = toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\nuse_identity_as_username = true\n");
    assert!(
        e.starts_with("culex.toml:6: option 'listeners[0].tls.use_identity_as_username': use_identity_as_username needs cafile"),
        "{e}"
    );

    // Files that do not exist, named with option and line; relative paths explained.
    let e = conf("listener 8883\ncertfile {d}/nope.pem\nkeyfile key.pem\n");
    assert!(
        e.contains("culex.conf:2: option 'certfile': cannot read 'nope.pem': No such file")
            && e.contains("culex.conf:3: option 'keyfile': cannot read 'key.pem'")
            && e.contains("relative paths are relative to the current directory"),
        "{e}"
    );
    let e = toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\ncafile = \"{d}/certs\"\ncapath = \"{d}/ca.pem\"\n");
    assert!(
        e.contains("culex.toml:6: option 'listeners[0].tls.cafile': 'certs' is a directory; expected a file")
            && e.contains("culex.toml:7: option 'listeners[0].tls.capath': cannot open directory 'ca.pem'"),
        "{e}"
    );

    // tls_version
    assert_eq!(
        conf("listener 1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\ntls_version tlsv1.1\n"),
        "culex.conf:4: option 'tls_version': 'tlsv1.1' is not supported: TLS versions before 1.2 are insecure; allowed: tlsv1.2 or tlsv1.3"
    );
    assert!(toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\ntls_version = \"1.3\"\n")
        .contains("culex.toml:6: option 'listeners[0].tls.tls_version': invalid value '1.3'; allowed: tlsv1.2 or tlsv1.3"));
    assert!(conf("listener 1\nrequire_certificate yes\n")
        .contains("invalid value 'yes'; allowed: true or false"));

    // Unknown keys stay errors; http_dir is refused.
    assert!(toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\ndhparamfile = \"x\"\n")
        .contains("unknown key 'listeners[0].tls.dhparamfile'; allowed keys: certfile, keyfile, cafile, capath, crlfile, require_certificate, use_identity_as_username, use_subject_as_username, ciphers, ciphers_tls13, tls_version"));
    // Cipher suite names are checked where they are written, in both syntaxes.
    assert!(toml("[[listeners]]\nport = 1\n[listeners.tls]\ncertfile = \"{d}/cert.pem\"\nkeyfile = \"{d}/key.pem\"\nciphers = \"HIGH:!aNULL\"\n")
        .contains("culex.toml:6: option 'listeners[0].tls.ciphers': unknown TLS 1.2 cipher suite 'HIGH'; supported (OpenSSL or IANA names): ECDHE-ECDSA-AES256-GCM-SHA384"));
    assert!(conf("listener 1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\nciphers_tls1.3 TLS_AES_128_CCM_SHA256\n")
        .starts_with("culex.conf:4: option 'ciphers_tls1.3': unknown TLS 1.3 cipher suite 'TLS_AES_128_CCM_SHA256'"));
    // The whole subject or the CN as user name, not both.
    assert!(conf("listener 1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\ncafile {d}/ca.pem\nuse_subject_as_username true\nuse_identity_as_username true\n")
        .contains("use_subject_as_username and use_identity_as_username both name the user; set one"));
    assert!(toml("[[listeners]]\nport = 1\nhttp_dir = \"/srv\"\n")
        .contains("unknown key 'listeners[0].http_dir'"));
    assert_eq!(
        conf("listener 1\nprotocol websockets\nhttp_dir /srv\n"),
        "culex.conf:3: unknown option 'http_dir': this mosquitto option is not supported yet by Culex"
    );
    // Repeated options of one listener warn.
    let loaded = f
        .conf("listener 1\ncertfile {d}/cert.pem\nkeyfile {d}/key.pem\ncertfile {d}/cert.pem\n")
        .expect("loads");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
}

#[test]
fn global_security_files_both_syntaxes() {
    let f = Fixture::new();
    let c = f.both(
        "listener 1883\npassword_file {d}/passwd\nacl_file {d}/acl\n",
        "[[listeners]]\nport = 1883\n[security]\npassword_file = \"{d}/passwd\"\nacl_file = \"{d}/acl\"\n",
    );
    assert_eq!(
        c.security,
        Security {
            allow_anonymous: false,
            password_file: Some(f.p("passwd")),
            acl_file: Some(f.p("acl")),
            use_username_as_clientid: false,
        }
    );
    assert!(!c.per_listener_settings);
    assert_eq!(c.security_for(&c.listeners[0]), &c.security);

    // Without per_listener_settings they are global wherever they appear.
    let c = f
        .conf("listener 1883\nlistener 1884\npassword_file {d}/passwd\nallow_anonymous true\n")
        .expect("loads")
        .config;
    assert!(c.listeners.iter().all(|l| l.security.is_none()));
    assert!(c.security.allow_anonymous);
    assert_eq!(c.security.password_file, Some(f.p("passwd")));

    // Missing files are errors naming option and line.
    assert!(f
        .errors(f.conf("acl_file {d}/missing\n"))
        .starts_with("culex.conf:1: option 'acl_file': cannot read 'missing'"));
    assert!(f
        .errors(f.toml("[security]\npassword_file = \"{d}/missing\"\n"))
        .starts_with("culex.toml:2: option 'security.password_file': cannot read 'missing'"));
    assert!(f
        .errors(f.toml("[security]\npassword_file = \"\"\n"))
        .contains("the path must not be empty"));
    assert!(f
        .errors(f.conf("password_file\n"))
        .contains("option 'password_file': missing value; allowed: a file path"));

    // From the environment.
    let c = f
        .toml_env("", &[("CULEX__SECURITY__ACL_FILE", "{d}/acl")])
        .expect("loads")
        .config;
    assert_eq!(c.security.acl_file, Some(f.p("acl")));
}

#[test]
fn per_listener_settings_both_syntaxes() {
    let f = Fixture::new();
    let c = f.both(
        "per_listener_settings true\nlistener 1883\npassword_file {d}/passwd\nallow_anonymous true\n\
         listener 8883\nacl_file {d}/acl2\npassword_file {d}/passwd2\n",
        "per_listener_settings = true\n[[listeners]]\nport = 1883\n[listeners.security]\npassword_file = \"{d}/passwd\"\n\
         allow_anonymous = true\n[[listeners]]\nport = 8883\n[listeners.security]\nacl_file = \"{d}/acl2\"\npassword_file = \"{d}/passwd2\"\n",
    );
    assert!(c.per_listener_settings);
    let first = c.security_for(&c.listeners[0]);
    assert!(first.allow_anonymous);
    assert_eq!(first.password_file, Some(f.p("passwd")));
    assert_eq!(first.acl_file, None);
    let second = c.security_for(&c.listeners[1]);
    assert!(
        !second.allow_anonymous,
        "per listener: anonymous off by default"
    );
    assert_eq!(second.acl_file, Some(f.p("acl2")));
    assert_eq!(second.password_file, Some(f.p("passwd2")));

    // A listener without its own settings gets the per-listener default.
    let c = f.both(
        "per_listener_settings true\nlistener 1883\n",
        "per_listener_settings = true\n[[listeners]]\nport = 1883\n",
    );
    assert_eq!(
        c.security_for(&c.listeners[0]),
        &Security::per_listener_default()
    );

    // The flag may come after the options it governs (mosquitto reads the whole file).
    let c = f
        .conf("listener 1883\nallow_anonymous true\nlistener 1884\nper_listener_settings true\n")
        .expect("loads")
        .config;
    assert!(c.security_for(&c.listeners[0]).allow_anonymous);
    assert!(!c.security_for(&c.listeners[1]).allow_anonymous);

    // Before any listener: the default listener's, else an error.
    let c = f
        .conf("per_listener_settings true\npassword_file {d}/passwd\nport 1883\nlistener 1884\n")
        .expect("loads")
        .config;
    assert_eq!(
        c.security_for(&c.listeners[0]).password_file,
        Some(f.p("passwd"))
    );
    assert_eq!(c.security_for(&c.listeners[1]).password_file, None);
    assert!(f
        .errors(f.conf("per_listener_settings true\npassword_file {d}/passwd\nlistener 1884\n"))
        .starts_with("culex.conf:2: with per_listener_settings true, 'password_file' applies to the listener it follows"));
    assert!(f
        .errors(f.conf("per_listener_settings true\n"))
        .starts_with("culex.conf:1: option 'per_listener_settings': per_listener_settings true needs at least one `listener` line"));
    // Missing per-listener files are reported at their line.
    assert!(f
        .errors(f.conf("per_listener_settings true\nlistener 1\nlistener 2\nacl_file {d}/nope\n"))
        .starts_with("culex.conf:4: option 'acl_file': cannot read 'nope'"));

    // TOML: no global [security] with per_listener_settings, no [listeners.security] without.
    let e = f.errors(f.toml(
        "per_listener_settings = true\n[[listeners]]\nport = 1\n[security]\nallow_anonymous = true\n",
    ));
    assert!(
        e.starts_with("culex.toml:5: option 'security.allow_anonymous': with per_listener_settings = true there are no global security settings"),
        "{e}"
    );
    let e =
        f.errors(f.toml("[[listeners]]\nport = 1\n[listeners.security]\nallow_anonymous = true\n"));
    assert!(
        e.starts_with("culex.toml:3: option 'listeners[0].security': listener security settings need per_listener_settings = true"),
        "{e}"
    );
    assert!(f
        .errors(f.toml("per_listener_settings = true\n"))
        .contains("per_listener_settings = true needs [[listeners]]"));
    assert!(f
        .errors(f.toml("[security]\nper_listener_settings = true\n"))
        .contains(
            "'per_listener_settings' is a top-level key: write it before the first [section]"
        ));
    assert!(f
        .errors(f.toml("per_listener_settings = true\n[[listeners]]\nport = 1\n[listeners.security]\nmax_qos = 1\n"))
        .contains("unknown key 'listeners[0].security.max_qos'; allowed keys: allow_anonymous, password_file, acl_file"));
    // A per-listener file that does not exist.
    assert!(f
        .errors(f.toml("per_listener_settings = true\n[[listeners]]\nport = 1\n[listeners.security]\nacl_file = \"{d}/nope\"\n"))
        .starts_with("culex.toml:5: option 'listeners[0].security.acl_file': cannot read 'nope'"));
}

#[test]
fn validate_checks_code_built_configs() {
    let f = Fixture::new();
    let mut c = Config::embedded_on_port(0);
    c.listeners[0].tls = Some(Tls {
        require_certificate: true,
        ..Tls::new(f.p("cert.pem"), Path::new("/nonexistent/key.pem"))
    });
    c.listeners[1].security = Some(Security::default());
    let keys: Vec<String> = c
        .validate()
        .expect_err("invalid")
        .diagnostics
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(
        keys,
        [
            "listeners[0].tls.keyfile",
            "listeners[0].tls.require_certificate",
            "listeners[1].security"
        ]
    );
}
