//! Developer tools, outside the broker's request path: the benchmark, the synthetic population, the
//! development PKI, `lienthong demo` and a throw-away PostgreSQL. The broker never calls into this tree; the CLI and the tests do.

pub mod bench;
pub mod certs;
pub mod demo;
pub mod population;
pub mod throwaway_pg;
pub mod upstream_demo;
