//! The Culex broker as a library: the binary's `main` is a thin CLI around [`server::run`], and
//! tests start the same server in-process with [`server::start`]. The binary's subcommands
//! (`culex passwd`, `culex pub`, `culex sub`) are in [`cli`], described with the broker's flags
//! in `cli/args.rs`.

pub mod assets;
pub mod bridges;
pub mod cli;
mod cluster;
mod connection;
mod context;
pub mod counters;
mod http;
mod local_link;
mod login_gate;
mod memory;
pub mod metrics;
mod persistence;
pub mod privileges;
mod security;
pub mod server;
mod sys;
pub mod systemd;
mod tls;
mod tls_chain;
mod tls_identity;
mod transport;

pub use http::Readiness;
pub use persistence::reset_store;
pub use server::{check_files, run, start, RunningServer};
pub use tls::{check_notes, check_tls, TlsSetupError};
