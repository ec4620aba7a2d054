//! The man pages and shell completions rendered by `build.rs`, embedded in the binary so that
//! packagers get exactly what this build describes: `culex generate-assets DIR`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// Each generated file: its path under the output directory and its contents.
pub const FILES: &[(&str, &[u8])] = &[
    (
        "man/man1/culex.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/man/culex.1")),
    ),
    (
        "man/man1/culex-passwd.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/man/culex-passwd.1")),
    ),
    (
        "man/man1/culex-pub.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/man/culex-pub.1")),
    ),
    (
        "man/man1/culex-sub.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/man/culex-sub.1")),
    ),
    (
        "completions/culex.bash",
        include_bytes!(concat!(env!("OUT_DIR"), "/completions/culex.bash")),
    ),
    (
        "completions/_culex",
        include_bytes!(concat!(env!("OUT_DIR"), "/completions/_culex")),
    ),
    (
        "completions/culex.fish",
        include_bytes!(concat!(env!("OUT_DIR"), "/completions/culex.fish")),
    ),
];

const USAGE: &str = "\
Usage: culex generate-assets DIR

Writes the man pages (DIR/man/man1/culex*.1) and the shell completions (DIR/completions/:
culex.bash, _culex for zsh, culex.fish), creating the directories; existing files are replaced.
";

/// Writes every file of [`FILES`] under `dir`, creating directories as needed.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    for (name, contents) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Runs `culex generate-assets` with the arguments after the subcommand name.
pub fn main(args: &[OsString]) -> ExitCode {
    match args {
        [flag] if flag == "--help" || flag == "-h" => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        [dir] => match write_all(Path::new(dir)) {
            Ok(()) => {
                for (name, _) in FILES {
                    println!("{}", Path::new(dir).join(name).display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("culex generate-assets: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprint!("culex generate-assets: expected one directory\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
