//! The `lienthong` binary: parse the command line and hand over to [`lienthong::cli::run`].

use clap::Parser;

// The pipeline allocates per request (JSON values, header maps, TLS records, sled nodes) from several
// threads at once; glibc's malloc and free were ~15 % of the broker's CPU under load (BENCHMARKS.md).
// Its first arena is committed on demand, not up front (`.cargo/config.toml`): 40 MiB less idle RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = lienthong::cli::Cli::parse();
    std::process::exit(lienthong::cli::run(cli).await);
}
