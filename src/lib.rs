//! lienthong — the one door through which government agencies share citizen data.
//!
//! A request flows through the modules in this order (see `DESIGN.md` in the shared folder):
//!
//! ```text
//! agency ──mTLS──▶ tls ─▶ identity ─▶ registry ─▶ connector (decode) ─▶ policy ─▶ quota
//!                                                                          │
//!    agency format ◀── connector (encode) ◀── policy (filter) ◀── store ◀──┘
//!                                 │
//!                               audit (durable before the response is written)
//! ```
//!
//! | module | stage |
//! |---|---|
//! | [`config`] | the typed `lienthong.toml`, validated with errors naming key and file |
//! | [`tls`] | rustls server config: client certificates chained to the CA bundle, CRLs, TLS 1.2+ |
//! | [`identity`] | the verified peer certificate → [`identity::PeerIdentity`] |
//! | [`json`] | strict JSON decoding: duplicate keys refused, nesting bounded |
//! | [`registry`] | agencies, their bound certificates, status, plan and billing class |
//! | [`citizen_id`] | the 12-digit personal ID (province, century/gender digit, birth year) |
//! | [`qr`] | the CCCD QR payload printed on the chip-based citizen ID card |
//! | [`connector`] | declarative `connectors/*.toml`: an agency's JSON or XML ↔ the canonical operations |
//! | [`schema`] | the canonical citizen record as JSON Schema, checked on every write |
//! | [`record`] | derived fields of a record (`covid_status`) |
//! | [`policy`] | the purpose catalogue: which fields each purpose may read or write |
//! | [`catalogue`] | the yearly catalogue versions, effective-dated; the one in force serves each request |
//! | [`quota`] | per agency/purpose limits per minute, day and month; served and refused totals for billing |
//! | [`billing`] | the monthly report at the terms in force at each call, its reconciliation, closed (signed) months |
//! | [`store`] | citizen records, behind the [`store::CitizenStore`] seam (sled by default) |
//! | [`audit`] | the append-only, hash-chained audit trail |
//! | [`canonical`] | the canonical operations (read for a purpose, append history) every channel uses |
//! | [`audit_api`] | the audit trail for operators (head, verify, search) and citizens (who read my data) |
//! | [`sms`] | channel: SMS self-look-up through the telecom gateway (one reply for every failure) |
//! | [`checkpoint`] | channel: checkpoint check-ins (CCCD QR scans) and contact tracing for the health authority |
//! | [`accountability`] | the person behind a request and the reason (official, issue, legal basis, consent, bulk, hidden-until) |
//! | [`xroad`] | channel: X-Road message protocol for SOAP (`POST /xroad`) and REST (`/r1/…`) |
//! | [`clock`] | "now" for calendar decisions (hidden accesses), movable in tests |
//! | [`api`] | the canonical API on the agency listener |
//! | [`import`] | `POST /admin/v1/citizens/import`: JSON Lines of canonical records, all or nothing per batch |
//! | [`signed_answer`] | every agency-listener answer signed: detached JWS (Ed25519), key rotation, the JWKS |
//! | [`dcc`] | EU Digital COVID Certificates: issue (`HC1:` + QR) and verify offline |
//! | [`admin`] | the admin API on the admin listener |
//! | [`openapi`] | the published catalogue as an OpenAPI 3.1 document (`GET /v1/catalogue`) |
//! | [`metrics`] | Prometheus metrics (`GET /metrics` on the admin listener) |
//! | [`console`] | the operator's web console on the admin listener (`/admin/console`) |
//! | [`listener`] | before and after the handshake: a plain-text 400 for plaintext HTTP, hints in the log |
//! | [`server`] | the listeners, per-connection identity, routing and graceful shutdown |
//! | [`supervisor`] | live recovery: reopens a failed database (full disk) without a restart |
//! | [`cli`] | the command line: `demo`, `serve`, `certs`, `agency`, `citizens`, `audit`, `billing`, `catalogue`, `dcc`, `verify-response`, `answer-keys` |
//! | [`bench`] | `lienthong bench`: the pipeline against a bare hyper + rustls baseline |
//! | [`client`] | a small mTLS HTTP client used by the CLI, the tests and the benchmarks |
//! | [`certs`] | rcgen-made development PKI (`demo`, `certs init`) |
//! | [`progress`] | progress of long work: a bar on a terminal, a periodic log line otherwise |
//! | [`population`] | a synthetic, deterministic population for the demo and benchmarks |
//! | [`demo`] | `lienthong demo`: dev certificates, sample data and a running broker |
//! | [`clock`] | the broker's clock, which dates every decision a bill depends on (tests move it) |
//! | [`error`] | the one error type every stage answers with: status + stable `code` |

pub mod accountability;
pub mod admin;
pub mod api;
pub mod audit;
pub mod audit_api;
pub mod bench;
pub mod billing;
pub mod broker;
pub mod canonical;
pub mod catalogue;
pub mod certs;
pub mod checkpoint;
pub mod citizen_id;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connector;
pub mod console;
pub mod dcc;
pub mod demo;
pub mod error;
pub mod identity;
pub mod import;
pub mod json;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod population;
pub mod progress;
pub mod qr;
pub mod quota;
pub mod record;
pub mod registry;
pub mod schema;
pub mod server;
pub mod signed_answer;
pub mod sms;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod xroad;
