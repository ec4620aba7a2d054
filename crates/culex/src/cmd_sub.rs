//! `culex sub`: being written (see the issue tracker).

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs `culex sub` with the arguments after the subcommand name.
pub fn main(_args: &[OsString]) -> ExitCode {
    eprintln!("culex sub: not available yet");
    ExitCode::from(2)
}
