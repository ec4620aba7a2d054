//! `culex passwd`: being written (see the issue tracker).

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs `culex passwd` with the arguments after the subcommand name.
pub fn main(_args: &[OsString]) -> ExitCode {
    eprintln!("culex passwd: not available yet");
    ExitCode::from(2)
}
