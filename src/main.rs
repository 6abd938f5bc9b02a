//! The `lienthong` binary: parse the command line and hand over to [`lienthong::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = lienthong::cli::Cli::parse();
    std::process::exit(lienthong::cli::run(cli).await);
}
