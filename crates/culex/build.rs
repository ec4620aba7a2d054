//! Renders the man pages (`culex.1`, `culex-passwd.1`, `culex-pub.1`, `culex-sub.1`) and the
//! shell completions (bash, zsh, fish) into `OUT_DIR`, from the same description of the command
//! line the binary uses (`src/cli/args.rs`). The binary embeds them; `culex generate-assets DIR`
//! writes them out for packagers.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

#[allow(dead_code, unreachable_pub)] // The binary uses the rest of it.
#[path = "src/cli/args.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli/args.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| {
            std::io::Error::other("OUT_DIR is not set (build.rs runs under cargo)")
        })?);
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // One page per subcommand, named culex-SUB.1 (built first, so that the subcommands are
    // named `culex pub` and their pages culex-pub). Every page's footer names culex's version.
    let mut cmd = cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("culex {}", env!("CARGO_PKG_VERSION"));
    for page in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
        clap_mangen::Man::new(page.clone())
            .source(source.as_str())
            .generate_to(&man)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        generate_completion(shell, &completions)?;
    }
    Ok(())
}

fn generate_completion(shell: Shell, dir: &Path) -> std::io::Result<PathBuf> {
    clap_complete::generate_to(shell, &mut cli::command(), "culex", dir)
}
