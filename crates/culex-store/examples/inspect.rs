//! Opens a data directory and prints what a broker would recover from it.
//!
//! `cargo run -p culex-store --example inspect -- DIR`. Note that loading deletes what has
//! expired, as the broker does at start-up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: inspect DATA_DIR");
        return ExitCode::from(2);
    };
    let result = culex_store::Store::open(&dir).and_then(|s| s.load(Instant::now()));
    match result {
        Ok((recovered, report)) => {
            println!("{report}");
            for s in &recovered.sessions {
                let last = s.messages.last().map(|(seq, _)| *seq);
                println!(
                    "session {:?}: {} subscriptions, {} messages, last seq {last:?}",
                    s.client_id,
                    s.record.subscriptions.len(),
                    s.messages.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
