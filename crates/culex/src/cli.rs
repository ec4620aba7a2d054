//! The command line: the broker's flags and the subcommand tables ([`args`], also compiled by
//! `build.rs` for the man pages and completions), and the Mosquitto-compatible tools run as
//! subcommands: `culex passwd` ([`passwd`]), `culex pub` ([`publish`]) and `culex sub`
//! ([`subscribe`]).

pub mod args;
mod common;
pub mod passwd;
pub mod publish;
pub mod subscribe;

pub use args::*;
