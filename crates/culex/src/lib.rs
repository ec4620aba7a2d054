//! The Culex broker as a library: the binary's `main` is a thin CLI around [`server::run`], and
//! tests start the same server in-process with [`server::start`]. The `cmd_*` modules are the
//! binary's subcommands (`culex passwd`, `culex pub`, `culex sub`).

pub mod cmd_passwd;
pub mod cmd_pub;
pub mod cmd_sub;
mod connection;
pub mod server;

pub use server::{run, start, RunningServer};
