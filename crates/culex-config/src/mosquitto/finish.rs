//! After the last line: listeners, security and bridges checked as a whole and turned into the
//! [`Config`], with every problem located in its file and line.

use super::*;

impl Reader {
    /// Builds the listeners, applies the security options and the
    /// allow_anonymous rule, validates.
    pub(super) fn finish(mut self, main_file: &Path) -> Result<Loaded, ConfigError> {
        if let Some(level) = self.log_type {
            self.config.log.level = level;
        }
        let mut origins: Vec<Origin> = Vec::new();
        let mut listeners = Vec::new();
        let mut opts = Vec::new();
        let default_opts = std::mem::take(&mut self.default_opts);
        let has_default = self.default_port.is_some() || self.bind_address.is_some();
        if has_default {
            let port = self.default_port.as_ref().map_or(DEFAULT_PORT, |(p, _)| *p);
            let host = self.bind_address.as_ref().map(|(h, _)| h.clone());
            // Report problems with the default listener at bind_address when
            // it is about the host, else at port.
            let (option, loc) = match (&self.bind_address, &self.default_port) {
                (Some((_, loc)), None) => ("bind_address", Some(loc.clone())),
                (_, Some((_, loc))) => ("port", Some(loc.clone())),
                (None, None) => ("port", None),
            };
            origins.push(Origin {
                option,
                loc: loc.clone(),
                options: HashMap::new(),
            });
            listeners.push(Listener {
                host,
                ..Listener::all_interfaces(port)
            });
            opts.push((default_opts, loc));
        } else {
            for (key, (_, loc)) in sorted(&default_opts) {
                self.error(
                    &loc,
                    key,
                    format!(
                        "option '{key}' applies to a listener, but there is no `listener` line \
                         before it and no default listener (`port`); put it after the \
                         `listener` line it is for"
                    ),
                );
            }
        }
        // Index of the first `listener` line in `listeners`.
        let first_line = listeners.len();
        for pending in self.listeners.drain(..) {
            origins.push(Origin {
                option: "listener",
                loc: Some(pending.loc.clone()),
                options: HashMap::new(),
            });
            listeners.push(pending.listener);
            opts.push((pending.opts, Some(pending.loc)));
        }
        for (i, (listener_opts, listener_loc)) in opts.into_iter().enumerate() {
            let (Some(listener), Some(origin)) = (listeners.get_mut(i), origins.get_mut(i)) else {
                continue;
            };
            for (key, (_, loc)) in &listener_opts.values {
                origin.options.insert(key, loc.clone());
            }
            if let Some((ListenerValue::Protocol(p), _)) = listener_opts.values.get("protocol") {
                listener.protocol = *p;
            }
            if let Some((ListenerValue::Domain(d), _)) = listener_opts.values.get("socket_domain") {
                listener.socket_domain = Some(*d);
            }
            listener.bind_interface = listener_opts.text("bind_interface");
            listener.mount_point = listener_opts.text("mount_point");
            match build_tls(&listener_opts) {
                Ok(tls) => listener.tls = tls,
                Err((loc, key, message)) => {
                    let loc = loc.or(listener_loc);
                    match loc {
                        Some(loc) => self.error(&loc, key, message),
                        None => self.diagnostics.push(Diagnostic {
                            file: main_file.to_path_buf(),
                            line: None,
                            key: key.to_owned(),
                            message,
                        }),
                    }
                }
            }
        }

        let defines_listeners = !listeners.is_empty();
        if defines_listeners {
            self.config.listeners = listeners;
        } else {
            // Mosquitto 2 without listeners: loopback only, anonymous allowed.
            self.config.listeners = Listener::loopback(DEFAULT_PORT);
        }
        self.apply_security(&mut origins, has_default, first_line, defines_listeners);

        for pending in std::mem::take(&mut self.bridges) {
            if pending.failed {
                continue;
            }
            match pending.draft.finish() {
                Ok(bridge) => self.config.bridges.push(bridge),
                Err((option, message)) => {
                    let at = pending.locs.get(option).unwrap_or(&pending.loc).clone();
                    let key = if pending.locs.contains_key(option) {
                        option
                    } else {
                        "connection"
                    };
                    // Name the option in the message when reported at the `connection` line.
                    let message = if key == option {
                        message
                    } else {
                        format!("{message} (option '{option}')")
                    };
                    self.error(&at, key, message);
                }
            }
        }
        for problem in validate::problems(&self.config) {
            let diagnostic = self.locate(problem, &origins, main_file);
            self.diagnostics.push(diagnostic);
        }
        if self.diagnostics.is_empty() {
            Ok(Loaded {
                config: self.config,
                warnings: self.warnings,
            })
        } else {
            Err(ConfigError {
                diagnostics: self.diagnostics,
            })
        }
    }

    /// Applies `allow_anonymous`, `password_file` and `acl_file`: globally,
    /// or with `per_listener_settings true` to the listener each follows.
    pub(super) fn apply_security(
        &mut self,
        origins: &mut [Origin],
        has_default: bool,
        first_line: usize,
        defines_listeners: bool,
    ) {
        let settings = std::mem::take(&mut self.security);
        let per_listener = self.config.per_listener_settings;
        if per_listener {
            if !defines_listeners {
                let loc = self.set_at.get("per_listener_settings").cloned();
                if let Some(loc) = loc {
                    self.error(
                        &loc,
                        "per_listener_settings",
                        "per_listener_settings true needs at least one `listener` line \
                         (each listener then has its own security options)",
                    );
                }
                return;
            }
            for listener in &mut self.config.listeners {
                listener.security = Some(Security::per_listener_default());
            }
        }
        // Where each option was set, per target (None = global), for the
        // "given more than once" warning.
        let mut seen: HashMap<(Option<usize>, &'static str), Loc> = HashMap::new();
        for setting in settings {
            let key = setting.spec.key;
            let target = if per_listener {
                match setting.after_listener {
                    Some(line) => Some(first_line + line),
                    None if has_default => Some(0),
                    None => {
                        self.error(
                            &setting.loc,
                            key,
                            format!(
                                "with per_listener_settings true, '{key}' applies to the listener \
                                 it follows, but there is no `listener` line before it and no \
                                 default listener (`port`); put it after the `listener` line it is for"
                            ),
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            let security = match target {
                Some(i) => self
                    .config
                    .listeners
                    .get_mut(i)
                    .and_then(|l| l.security.as_mut()),
                None => Some(&mut self.config.security),
            };
            let Some(security) = security else {
                continue;
            };
            if let Err(message) = options::apply_security(security, setting.spec, setting.value) {
                self.error(&setting.loc, key, message);
                continue;
            }
            if let Some(previous) = seen.insert((target, key), setting.loc.clone()) {
                let previous = previous.label();
                let scope = if target.is_some() {
                    " for this listener"
                } else {
                    ""
                };
                self.warn(
                    &setting.loc,
                    format!("option '{key}' is given more than once{scope} (also at {previous}); the last value is used"),
                );
            }
            match target.and_then(|i| origins.get_mut(i)) {
                Some(origin) => {
                    origin.options.insert(key, setting.loc);
                }
                None => {
                    self.set_at.insert(key, setting.loc);
                }
            }
        }
        // Mosquitto 2 rule: a file that defines listeners does not allow
        // anonymous clients unless it says so.
        if defines_listeners && !self.set_at.contains_key("allow_anonymous") {
            self.config.security.allow_anonymous = false;
        }
    }

    /// Turns a validation problem into a diagnostic at the line that caused
    /// it.
    pub(super) fn locate(
        &self,
        problem: Problem,
        origins: &[Origin],
        main_file: &Path,
    ) -> Diagnostic {
        let mut key = problem.option.map_or_else(String::new, str::to_owned);
        let mut loc = problem.option.and_then(|o| self.set_at.get(o).cloned());
        if let Some(origin) = problem.listener.and_then(|i| origins.get(i)) {
            match problem.option.and_then(|o| origin.options.get(o)) {
                Some(l) => loc = Some(l.clone()),
                None => {
                    key = origin.option.to_owned();
                    loc = origin.loc.clone();
                    if origin.option == "port" && problem.key.ends_with(".host") {
                        if let Some((_, l)) = &self.bind_address {
                            key = "bind_address".to_owned();
                            loc = Some(l.clone());
                        }
                    }
                }
            }
        }
        Diagnostic {
            file: loc
                .as_ref()
                .map_or_else(|| main_file.to_path_buf(), |l| l.file.clone()),
            line: loc.map(|l| l.line),
            key,
            message: problem.message,
        }
    }
}
