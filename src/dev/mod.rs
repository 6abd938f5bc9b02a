//! Developer tools, outside the broker's request path: the benchmark, the synthetic population, the
//! development PKI and `lienthong demo`. The broker never calls into this tree; the CLI and the tests do.

pub mod bench;
pub mod certs;
pub mod demo;
pub mod population;
pub mod upstream_demo;
