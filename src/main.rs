//! The `kco` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kco::cli::Cli::parse();
    kco::tls::install_crypto_provider();
    kco::cli::run(cli)
}
