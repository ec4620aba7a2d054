//! The Culex broker as a library: the binary's `main` is a thin CLI around [`server::run`], and
//! tests start the same server in-process with [`server::start`].

mod connection;
pub mod server;

pub use server::{run, start, RunningServer};
