//! Errors: every problem found while loading, each with its location.

use std::fmt;
use std::path::PathBuf;

/// Loading failed. Holds every problem found (loading does not stop at the
/// first one). `Display` prints one diagnostic per line, e.g.
///
/// ```text
/// culex.conf:12: option 'max_qos': value 3 is out of range; allowed: 0, 1 or 2
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, in the order they were found (file order for a single
    /// file). Never empty.
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in (an included file for problems found in
    /// one). For a TOML value overridden from the environment it reads
    /// `environment variable CULEX__SECTION__KEY`. Empty for
    /// [`Config::validate`](crate::Config::validate) on a configuration
    /// built in code.
    pub file: PathBuf,
    /// 1-based line number, where known.
    pub line: Option<usize>,
    /// The option concerned, as written in that syntax: `max_qos` in
    /// mosquitto.conf, `mqtt.max_qos` or `listeners[0].port` in TOML. Empty
    /// when the problem is about the file as a whole.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// An error with a single diagnostic.
    pub(crate) fn single(diagnostic: Diagnostic) -> ConfigError {
        ConfigError {
            diagnostics: vec![diagnostic],
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        let mut wrote_location = false;
        if !file.is_empty() {
            write!(f, "{file}")?;
            wrote_location = true;
        }
        if let Some(line) = self.line {
            if wrote_location {
                write!(f, ":{line}")?;
            } else {
                write!(f, "line {line}")?;
            }
            wrote_location = true;
        }
        if wrote_location {
            write!(f, ": ")?;
        }
        // Don't repeat the option name when the message already quotes it,
        // as in "unknown option 'foo'".
        if !self.key.is_empty() && !self.message.contains(&format!("'{}'", self.key)) {
            write!(f, "option '{}': ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(file: &str, line: Option<usize>, key: &str, message: &str) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from(file),
            line,
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn display_formats() {
        let d = diag(
            "culex.conf",
            Some(12),
            "max_qos",
            "value 3 is out of range; allowed: 0, 1 or 2",
        );
        assert_eq!(
            d.to_string(),
            "culex.conf:12: option 'max_qos': value 3 is out of range; allowed: 0, 1 or 2"
        );
        let d = diag("c.conf", Some(3), "foo", "unknown option 'foo'");
        assert_eq!(d.to_string(), "c.conf:3: unknown option 'foo'");
        let d = diag("c.toml", None, "", "cannot read file");
        assert_eq!(d.to_string(), "c.toml: cannot read file");
        let d = diag("", None, "listeners", "no listener");
        assert_eq!(d.to_string(), "option 'listeners': no listener");
        let e = ConfigError {
            diagnostics: vec![diag("a", Some(1), "", "x"), diag("a", Some(2), "", "y")],
        };
        assert_eq!(e.to_string(), "a:1: x\na:2: y");
    }
}
