//! `culex passwd`: manage Mosquitto-format password files, flag-compatible with
//! `mosquitto_passwd`.
//!
//! ```text
//! culex passwd [-H sha512-pbkdf2|sha512|argon2id] [-I iterations] [-c | -D] passwordfile username
//! culex passwd [-H ...] [-I iterations] [-c] -b passwordfile username password
//! culex passwd [-H ...] [-I iterations] -U passwordfile
//! ```
//!
//! Differences from `mosquitto_passwd`, all deliberate:
//! * The default `$7$` iteration count is [`DEFAULT_PBKDF2_ITERATIONS`] (210,000, OWASP's
//!   figure for PBKDF2-HMAC-SHA512) instead of 101; `-H argon2id` is available.
//! * `-U` hashes only plaintext entries and leaves existing hashes alone (Mosquitto re-hashes
//!   the hashes, locking everyone out); a damaged `$6$`/`$7$`/`$argon2id$` entry stops `-U`
//!   instead of being hashed as if it were a password.
//! * Comments and blank lines are kept (Mosquitto calls them corrupt).
//! * The file is replaced atomically (temporary file in the same directory, fsync, rename,
//!   fsync of the directory) with mode 0600, keeping the previous owner and group when
//!   permitted; a symlink is followed and its target replaced.
//! * Usernames that the broker could not match (leading/trailing blanks, a leading `#`) are
//!   refused, as well as Mosquitto's refusals (`:`, control characters, over 65535 bytes).
//! * Without `-b`, the password is read twice without echo from the terminal; when standard
//!   input is not a terminal, the first line of standard input is the password and a second
//!   line, if present, must repeat it.
//!
//! Exit status as `mosquitto_passwd`: 0 on success, 1 on any error (including "user not found"
//! for `-D`, and a usage error). `--help` prints the usage and exits 0.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use culex_auth::{password_hash, HashKind, PasswordHash, DEFAULT_PBKDF2_ITERATIONS};

use crate::cli::PASSWD;

/// An error already worded for the user.
struct Fail(String);

type Result<T> = std::result::Result<T, Fail>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Fail(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Set,
    Create,
    Delete,
    Upgrade,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    batch: bool,
    hash: HashKind,
    file: PathBuf,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

/// What `parse_args` decided.
enum Parsed {
    Run(Options),
    Help,
}

/// Runs `culex passwd` with the arguments after the subcommand name.
pub fn main(args: &[OsString]) -> ExitCode {
    let result = parse_args(args).and_then(|parsed| match parsed {
        Parsed::Help => {
            print!("{}", PASSWD.help());
            Ok(())
        }
        Parsed::Run(opts) => run(opts),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

fn utf8(arg: &OsStr, what: &str) -> Result<String> {
    match arg.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => fail(format!("Error: the {what} must be valid UTF-8.")),
    }
}

fn usage_error(msg: &str) -> Fail {
    Fail(format!(
        "Error: {msg}\nRun `culex passwd --help` for usage."
    ))
}

fn parse_args(args: &[OsString]) -> Result<Parsed> {
    let mut hash_name: Option<String> = None;
    let mut iterations: Option<u32> = None;
    let (mut batch, mut create, mut delete, mut upgrade) = (false, false, false, false);
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let value = |name: &str| -> Result<String> {
            match args.get(i + 1) {
                Some(v) => utf8(v, &format!("{name} argument")),
                None => Err(usage_error(&format!(
                    "{name} argument given but not enough other arguments."
                ))),
            }
        };
        match arg.to_str() {
            // Only the options of the table (`culex passwd --help`) are accepted.
            Some(s)
                if s.starts_with('-') && s.len() > 1 && s != "--" && PASSWD.flag(s).is_none() =>
            {
                return Err(usage_error(&format!("unknown option '{s}'.")))
            }
            Some("-h" | "--help") => return Ok(Parsed::Help),
            Some("-H") => {
                hash_name = Some(value("-H")?);
                i += 1;
            }
            Some("-I") => {
                let v = value("-I")?;
                match v.parse::<u32>() {
                    Ok(n) if n >= 1 => iterations = Some(n),
                    _ => return fail("Error: Number of iterations must be > 0."),
                }
                i += 1;
            }
            Some("-b") => batch = true,
            Some("-c") => create = true,
            Some("-D") => delete = true,
            Some("-U") => upgrade = true,
            Some("--") => {
                i += 1;
                break;
            }
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                return Err(usage_error(&format!("unknown option '{s}'.")))
            }
            _ => break,
        }
        i += 1;
    }
    let rest = args.get(i..).unwrap_or_default();

    let hash = match hash_name.as_deref() {
        None | Some("sha512-pbkdf2") => HashKind::Sha512Pbkdf2 {
            iterations: iterations.unwrap_or(DEFAULT_PBKDF2_ITERATIONS),
        },
        Some("sha512") => HashKind::Sha512,
        Some("argon2id") => HashKind::Argon2id,
        Some(other) => {
            return fail(format!(
                "Error: Unknown hash type '{other}' (expected sha512-pbkdf2, sha512 or argon2id)."
            ))
        }
    };
    if iterations.is_some() && !matches!(hash, HashKind::Sha512Pbkdf2 { .. }) {
        return Err(usage_error("-I only applies to -H sha512-pbkdf2."));
    }
    for (a, b, x, y) in [
        (create, delete, "-c", "-D"),
        (create, upgrade, "-c", "-U"),
        (delete, upgrade, "-D", "-U"),
        (delete, batch, "-b", "-D"),
        (upgrade, batch, "-b", "-U"),
    ] {
        if a && b {
            return Err(usage_error(&format!(
                "{x} and {y} cannot be used together."
            )));
        }
    }
    let mode = match (create, delete, upgrade) {
        (true, _, _) => Mode::Create,
        (_, true, _) => Mode::Delete,
        (_, _, true) => Mode::Upgrade,
        _ => Mode::Set,
    };
    let wanted = match (mode, batch) {
        (Mode::Upgrade, _) => 1,
        (_, true) => 3,
        (_, false) => 2,
    };
    if rest.len() != wanted {
        let what = match (mode, batch) {
            (Mode::Upgrade, _) => "expected: -U passwordfile",
            (_, true) => "expected: passwordfile username password",
            (_, false) => "expected: passwordfile username",
        };
        return Err(usage_error(&format!("wrong number of arguments ({what}).")));
    }
    let file = PathBuf::from(&rest[0]);
    let username = match rest.get(1) {
        Some(u) => {
            let u = utf8(u, "username")?;
            check_username(&u)?;
            Some(u)
        }
        None => None,
    };
    let password = rest.get(2).map(|p| p.as_bytes().to_vec());
    if let Some(p) = &password {
        check_password(p)?;
    }
    Ok(Parsed::Run(Options {
        mode,
        batch,
        hash,
        file,
        username,
        password,
    }))
}

fn check_username(u: &str) -> Result<()> {
    if u.is_empty() {
        return fail("Error: Username must not be empty.");
    }
    if u.len() > 65_535 {
        return fail("Error: Username must be less than 65536 characters long.");
    }
    if u.chars().any(char::is_control) {
        return fail("Error: Username must not contain control characters.");
    }
    if u.contains(':') {
        return fail("Error: Username must not contain the ':' character.");
    }
    if u.starts_with('#') {
        return fail("Error: Username must not start with '#' (the line would be a comment).");
    }
    // In an ACL `pattern` line `%u` stands for the user name: a name with a wildcard or a
    // level separator would widen or shift the topics it grants (`pattern readwrite
    // devices/%u/#` with user `+` would grant every device's tree).
    if let Some(c) = u.chars().find(|c| matches!(c, '+' | '#' | '/')) {
        return fail(format!(
            "Error: Username must not contain '{c}': it would act as a topic wildcard or level \
             separator where ACL patterns substitute %u."
        ));
    }
    if u.trim() != u {
        return fail("Error: Username must not start or end with blanks.");
    }
    Ok(())
}

fn check_password(p: &[u8]) -> Result<()> {
    if p.len() > 65_535 {
        return fail("Error: Password must be less than 65536 characters long.");
    }
    Ok(())
}

/// Reads the new password without echo (terminal) or from standard input lines.
fn read_password() -> Result<Vec<u8>> {
    let stdin = io::stdin();
    let (first, second) = if stdin.is_terminal() {
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| Fail(format!("Error: cannot read the password: {e}")))
        };
        let first = ask("Password: ")?;
        if first.is_empty() {
            return fail("Error: Empty password.");
        }
        let second = ask("Reenter password: ")?;
        (first.into_bytes(), Some(second.into_bytes()))
    } else {
        let mut lock = stdin.lock();
        let mut line = |what: &str| -> Result<Option<Vec<u8>>> {
            let mut buf = Vec::new();
            match lock.read_until(b'\n', &mut buf) {
                Ok(0) => Ok(None),
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                    Ok(Some(buf))
                }
                Err(e) => fail(format!("Error: cannot read the {what}: {e}")),
            }
        };
        let Some(first) = line("password")? else {
            return fail("Error: no password on standard input.");
        };
        let second = line("password confirmation")?;
        (first, second)
    };
    if first.is_empty() {
        return fail("Error: Empty password.");
    }
    if let Some(second) = second {
        if second != first {
            return fail("Error: Passwords do not match.");
        }
    }
    check_password(&first)?;
    Ok(first)
}

/// One line of a password file, kept verbatim unless it is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment or blank line.
    Other(String),
    /// `user:field` (the username trimmed as the broker trims it).
    Entry {
        user: String,
        field: String,
        raw: String,
    },
}

impl Line {
    fn text(&self) -> &str {
        match self {
            Line::Other(s) => s,
            Line::Entry { raw, .. } => raw,
        }
    }
}

fn entry(user: &str, hash: String) -> Line {
    Line::Entry {
        user: user.to_owned(),
        raw: format!("{user}:{hash}"),
        field: hash,
    }
}

/// Splits a password file into lines; a line that is neither a comment, blank, nor
/// `user:something` is corrupt (as `mosquitto_passwd` says).
fn parse_lines(bytes: &[u8]) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Ok(lines);
    }
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let corrupt = || Fail(format!("Error: Corrupt password file at line {}.", n + 1));
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = std::str::from_utf8(raw).map_err(|_| corrupt())?;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            lines.push(Line::Other(raw.to_owned()));
            continue;
        }
        let (user, field) = raw.split_once(':').ok_or_else(corrupt)?;
        let (user, field) = (user.trim(), field.trim());
        if user.is_empty() || field.is_empty() {
            return Err(corrupt());
        }
        lines.push(Line::Entry {
            user: user.to_owned(),
            field: field.to_owned(),
            raw: raw.to_owned(),
        });
    }
    Ok(lines)
}

fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line.text());
        out.push('\n');
    }
    out
}

fn hash(password: &[u8], kind: HashKind) -> Result<String> {
    password_hash(password, kind).map_err(|e| Fail(format!("Error: {e}")))
}

/// Sets `user`'s password: replaces every line for `user`, or appends one.
fn set_user(lines: &mut Vec<Line>, user: &str, new_hash: String) {
    let mut found = false;
    for line in lines.iter_mut() {
        if matches!(line, Line::Entry { user: u, .. } if u == user) {
            *line = entry(user, new_hash.clone());
            found = true;
        }
    }
    if !found {
        lines.push(entry(user, new_hash));
    }
}

/// Removes every line for `user`; false if there was none.
fn delete_user(lines: &mut Vec<Line>, user: &str) -> bool {
    let before = lines.len();
    lines.retain(|line| !matches!(line, Line::Entry { user: u, .. } if u == user));
    lines.len() != before
}

/// Hashes plaintext entries; keeps valid hashes; refuses damaged ones. Returns how many
/// entries were hashed.
fn upgrade(lines: &mut [Line], kind: HashKind) -> Result<usize> {
    let mut hashed = 0;
    for (n, line) in lines.iter_mut().enumerate() {
        let Line::Entry { user, field, raw } = line else {
            continue;
        };
        if PasswordHash::parse(field).is_ok() {
            continue;
        }
        if ["$6$", "$7$", "$argon2"]
            .iter()
            .any(|p| field.starts_with(p))
        {
            return fail(format!(
                "Error: line {}: the password hash for user '{user}' is damaged; fix or \
                 remove the line (nothing was changed).",
                n + 1
            ));
        }
        // Plaintext: everything after the first ':' (trimmed) is the password.
        let plain = raw
            .split_once(':')
            .map(|(_, p)| p.trim())
            .unwrap_or_default();
        let user = user.clone();
        *line = entry(&user, hash(plain.as_bytes(), kind)?);
        hashed += 1;
    }
    Ok(hashed)
}

fn read_existing(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            " (use -c to create it)"
        } else {
            ""
        };
        Fail(format!(
            "Error: Unable to open password file {}: {e}{hint}.",
            path.display()
        ))
    })
}

fn run(opts: Options) -> Result<()> {
    let path = &opts.file;
    let username = opts.username.as_deref().unwrap_or_default();
    let new_password = || -> Result<Vec<u8>> {
        match &opts.password {
            Some(p) => Ok(p.clone()),
            None if opts.batch => fail("Error: batch mode needs a password."),
            None => read_password(),
        }
    };
    let lines = match opts.mode {
        Mode::Create => {
            let pw = new_password()?;
            vec![entry(username, hash(&pw, opts.hash)?)]
        }
        Mode::Set => {
            let mut lines = parse_lines(&read_existing(path)?)?;
            let pw = new_password()?;
            set_user(&mut lines, username, hash(&pw, opts.hash)?);
            lines
        }
        Mode::Delete => {
            let mut lines = parse_lines(&read_existing(path)?)?;
            if !delete_user(&mut lines, username) {
                return fail(format!(
                    "Warning: User {username} not found in password file."
                ));
            }
            lines
        }
        Mode::Upgrade => {
            let mut lines = parse_lines(&read_existing(path)?)?;
            if upgrade(&mut lines, opts.hash)? == 0 {
                return Ok(());
            }
            lines
        }
    };
    write_atomic(path, render(&lines).as_bytes()).map_err(|e| {
        Fail(format!(
            "Error: Unable to write password file {}: {e}.",
            path.display()
        ))
    })
}

/// Replaces `path` with `contents`: a 0600 temporary file in the same directory, fsync,
/// rename over the target, fsync of the directory. A symlink is followed; the previous owner
/// and group are kept when the process may set them.
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let previous = fs::metadata(&target).ok();
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;

    let (tmp_path, mut file) = create_temp(&dir, name)?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some(prev) = &previous {
            if prev.uid() != file.metadata()?.uid() || prev.gid() != file.metadata()?.gid() {
                // Best effort: only root (or the owner, for the group) may do this.
                if let Err(e) = std::os::unix::fs::fchown(&file, Some(prev.uid()), Some(prev.gid()))
                {
                    eprintln!(
                        "Warning: could not keep the owner of {}: {e}",
                        target.display()
                    );
                }
            }
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp_path, &target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last_err = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".culex-tmp-{pid}-{nanos:x}-{attempt}"));
        let tmp_path = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
        {
            Ok(f) => return Ok((tmp_path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn opts(a: &[&str]) -> Options {
        match parse_args(&args(a)) {
            Ok(Parsed::Run(o)) => o,
            Ok(Parsed::Help) => panic!("help"),
            Err(Fail(m)) => panic!("{m}"),
        }
    }

    fn err(a: &[&str]) -> String {
        match parse_args(&args(a)) {
            Ok(_) => panic!("accepted {a:?}"),
            Err(Fail(m)) => m,
        }
    }

    #[test]
    fn parser_follows_the_table() {
        crate::cli::common::assert_parser_follows_table(
            &PASSWD,
            |args| match parse_args(args) {
                Ok(parsed) => Ok(matches!(parsed, Parsed::Help)),
                Err(Fail(e)) => Err(e),
            },
            "Error: unknown option '{}'.\nRun `culex passwd --help` for usage.",
        );
    }

    #[test]
    fn argument_parsing() {
        let o = opts(&["-c", "-b", "f", "u", "p"]);
        assert_eq!(o.mode, Mode::Create);
        assert_eq!(
            o.hash,
            HashKind::Sha512Pbkdf2 {
                iterations: DEFAULT_PBKDF2_ITERATIONS
            }
        );
        assert_eq!(o.password.as_deref(), Some(&b"p"[..]));
        let o = opts(&["-H", "sha512", "f", "u"]);
        assert_eq!(
            (o.mode, o.hash, o.batch),
            (Mode::Set, HashKind::Sha512, false)
        );
        let o = opts(&["-I", "5000", "-b", "f", "u", "p"]);
        assert_eq!(o.hash, HashKind::Sha512Pbkdf2 { iterations: 5000 });
        assert_eq!(opts(&["-H", "argon2id", "-U", "f"]).mode, Mode::Upgrade);
        assert_eq!(opts(&["-D", "f", "u"]).mode, Mode::Delete);
        assert!(matches!(parse_args(&args(&["--help"])), Ok(Parsed::Help)));

        assert!(err(&["-c", "-D", "f", "u"]).contains("-c and -D cannot be used together"));
        assert!(err(&["-b", "-D", "f", "u"]).contains("-b and -D"));
        assert!(err(&["-H", "md5", "f", "u"]).contains("Unknown hash type 'md5'"));
        assert!(err(&["-H"]).contains("-H argument given but not enough"));
        assert!(err(&["-I", "0", "f", "u"]).contains("iterations must be > 0"));
        assert!(err(&["-H", "sha512", "-I", "9", "f", "u"]).contains("-I only applies"));
        assert!(err(&["-x", "f", "u"]).contains("unknown option '-x'"));
        assert!(err(&["f"]).contains("wrong number of arguments"));
        assert!(err(&["-b", "f", "u"]).contains("wrong number of arguments"));
        assert!(err(&["-U", "f", "u"]).contains("wrong number of arguments"));
        assert!(err(&[]).contains("wrong number of arguments"));
        assert!(err(&["f", "a:b"]).contains("':'"));
        assert!(err(&["f", "#a"]).contains("'#'"));
        assert!(err(&["f", "a+"]).contains("'+'"));
        assert!(err(&["f", "a#b"]).contains("'#'"));
        assert!(err(&["f", "site/a"]).contains("'/'"));
        assert!(err(&["f", " a"]).contains("blanks"));
        assert!(err(&["f", "a\tb"]).contains("control"));
        assert!(err(&["f", ""]).contains("empty"));
    }

    #[test]
    fn editing_keeps_comments_and_other_users() {
        let text = "# users\nalice:$6$x$y\n\nbob : $7$1$a$b\r\n";
        let mut lines = match parse_lines(text.as_bytes()) {
            Ok(l) => l,
            Err(Fail(m)) => panic!("{m}"),
        };
        assert_eq!(render(&lines), "# users\nalice:$6$x$y\n\nbob : $7$1$a$b\n");
        set_user(&mut lines, "bob", "NEW".into());
        set_user(&mut lines, "carol", "C".into());
        assert_eq!(
            render(&lines),
            "# users\nalice:$6$x$y\n\nbob:NEW\ncarol:C\n"
        );
        assert!(delete_user(&mut lines, "alice"));
        assert!(!delete_user(&mut lines, "alice"));
        assert_eq!(render(&lines), "# users\n\nbob:NEW\ncarol:C\n");
    }

    #[test]
    fn corrupt_lines_are_reported() {
        for (text, line) in [
            ("a:b\nnocolon\n", 2),
            (":x\n", 1),
            ("u:\n", 1),
            ("u: \n", 1),
        ] {
            match parse_lines(text.as_bytes()) {
                Ok(l) => panic!("accepted {text:?}: {l:?}"),
                Err(Fail(m)) => {
                    assert_eq!(m, format!("Error: Corrupt password file at line {line}."))
                }
            }
        }
        assert!(matches!(parse_lines(b""), Ok(l) if l.is_empty()));
    }

    #[test]
    fn upgrade_hashes_only_plaintext() {
        let kept = "$6$KOnbtca+tIJ/TjfO$THHl9i2CM0omqZKFHai2vW48nfHRXctk1AgOw9OKI66or2tX5Ur9FF+tjn9jwuOolHlk5UZYrypjGTxE9UYFig==";
        let text = format!("carol:{kept}\nplain: pass:word \n");
        let mut lines = match parse_lines(text.as_bytes()) {
            Ok(l) => l,
            Err(Fail(m)) => panic!("{m}"),
        };
        let n = match upgrade(&mut lines, HashKind::Sha512Pbkdf2 { iterations: 10 }) {
            Ok(n) => n,
            Err(Fail(m)) => panic!("{m}"),
        };
        assert_eq!(n, 1);
        assert_eq!(lines[0].text(), format!("carol:{kept}"));
        let Line::Entry { field, .. } = &lines[1] else {
            panic!("not an entry");
        };
        assert!(PasswordHash::parse(field).is_ok_and(|h| h.verify(b"pass:word")));

        let mut damaged = match parse_lines(b"x:$7$101$broken\n") {
            Ok(l) => l,
            Err(Fail(m)) => panic!("{m}"),
        };
        assert!(matches!(
            upgrade(&mut damaged, HashKind::Sha512),
            Err(Fail(m)) if m.contains("line 1") && m.contains("damaged")
        ));
    }
}
