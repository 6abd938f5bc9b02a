//! lienthong — the one door through which government agencies share citizen data.
//!
//! A request flows through the modules in this order; `pipeline::run` is that order in one function, and
//! a module imports only modules below it in the request (the ground floor, [`exchange`] and [`error`],
//! imports no stage):
//!
//! ```text
//! agency ──mTLS──▶ server (listener) ─▶ tls ─▶ identity ─▶ pipeline:
//!   admit (registry, admission) ─▶ read body ─▶ route to a front door (doors: api | connector | sms | checkpoint | xroad)
//!     ─▶ decode ─▶ canonical: authorize (policy) ─▶ meter (quota) ─▶ store ─▶ release (policy) ─▶ encode
//!   ─▶ audit (durable before the response is written) ─▶ log (metrics) ─▶ response
//! ```
//!
//! | module | stage |
//! |---|---|
//! | [`error`] | ground floor: the [`error::ErrorCode`] enum (one status per code) and the error every stage answers with |
//! | [`exchange`] | ground floor: the request context ([`exchange::Exchange`], [`exchange::Operation`]), the read request, the reply |
//! | [`config`] | the typed `lienthong.toml`, validated with errors naming key and file |
//! | [`server`] | listener: the two listeners, TLS handshakes, connections, refusals by the HTTP layer |
//! | [`listener`] | listener: before and after the handshake (a plain-text 400 for plaintext HTTP, hints in the log) |
//! | [`tls`] | rustls server config: client certificates chained to the CA bundle, CRLs, TLS 1.2+ |
//! | [`identity`] | identify: the verified peer certificate → [`identity::PeerIdentity`] |
//! | [`pipeline`] | the pipeline: identify → admit → read body → route → audit → log → encode |
//! | [`admission`] | admit: requests in flight per agency, SMS look-ups per phone |
//! | [`registry`] | admit: agencies, their bound certificates, status, plan and billing class |
//! | [`doors`] | route: the front doors, one room each; every door turns its channel's requests into canonical operations |
//! | [`doors::api`] | front door: the canonical API on the agency listener (and its DCC routes, [`doors::api::dcc`]) |
//! | [`doors::connector`] | front door: the declarative connectors' requests and answers |
//! | [`doors::sms`] | front door: SMS self-look-up through the telecom gateway (one reply for every failure) |
//! | [`doors::checkpoint`] | front door: checkpoint check-ins (CCCD QR scans) and contact tracing |
//! | [`doors::xroad`] | front door: X-Road message protocol for SOAP (`POST /xroad`) and REST (`/r1/…`) |
//! | [`connector`] | decode/encode: `connectors/*.toml`, loaded and checked at start (the set the broker holds), their XML reader |
//! | [`xroad_id`] | the X-Road identifiers (member, subsystem, service) the registry binds, and the service map |
//! | [`dcc`] | encode: EU Digital COVID Certificates: issue (`HC1:` + QR) and verify offline |
//! | [`checkpoint`] | store: registered checkpoints and their check-in index (sled; PostgreSQL in `postgres`) |
//! | [`admin`] | front door of the admin listener: the admin API |
//! | [`import`] | admin: `POST /admin/v1/citizens/import`: JSON Lines of canonical records, all or nothing per batch |
//! | [`console`] | the operator's web console on the admin listener (`/admin/console`) |
//! | [`field_path`] | the one field-path parser (`vaccinations[].date`) policy, schema, connectors and OpenAPI share |
//! | [`accountability`] | decode: the person behind a request and the reason (official, issue, legal basis, consent, bulk, hidden-until) |
//! | [`json`] | decode: strict JSON (duplicate keys refused, nesting bounded), `json::body` for request bodies |
//! | [`citizen_id`] | decode: the 12-digit personal ID (province, century/gender digit, birth year) |
//! | [`qr`] | decode: the CCCD QR payload printed on the chip-based citizen ID card |
//! | [`canonical`] | the canonical operations every front door uses: authorize, meter, read and release, append |
//! | [`policy`] | authorize and release: the purpose catalogue, which fields each purpose may read or write |
//! | [`catalogue`] | authorize: the yearly catalogue versions, effective-dated; the one in force serves each request |
//! | [`clock`] | the broker's clock, which dates every decision a bill or a hidden access depends on (tests move it) |
//! | [`schema`] | the canonical citizen record as JSON Schema, checked on every write |
//! | [`record`] | the record's shape: derived fields (`covid_status`), the history lists ([`record::History`]) |
//! | [`quota`] | meter: per agency/purpose limits per minute, day and month; served and refused totals |
//! | [`billing`] | the monthly report at the terms in force at each call, its reconciliation, closed (signed) months |
//! | [`store`] | store: citizen records behind the [`store::CitizenStore`] seam (sled by default); data-dir probes |
//! | [`postgres`] | the PostgreSQL backend of a cluster: records, audit chains and seals, quotas, registry, checkpoints, migrations, `db import` |
//! | [`upstream`] | store, upstream provider mode: the seam over HTTPS + mTLS to a population database, provider files, breaker |
//! | [`audit`] | audit: the append-only, hash-chained audit trail |
//! | [`audit_api`] | the audit trail for operators (head, verify, search) and citizens (who read my data) |
//! | [`openapi`] | the published catalogue as an OpenAPI 3.1 document (`GET /v1/catalogue`) |
//! | [`signed_answer`] | encode: every agency-listener answer signed: detached JWS (Ed25519), key rotation, the JWKS |
//! | [`metrics`] | log: Prometheus metrics (`GET /metrics` on the admin listener) |
//! | [`broker`] | the broker's state: config, stores, registry, catalogue, connectors, limits |
//! | [`supervisor`] | `serve`: runs the listeners, reopens a failed database live, checks the store against the audit trail |
//! | [`cli`] | the command line: `demo`, `serve`, `certs`, `agency`, `citizens`, `audit`, `billing`, `catalogue`, `dcc`, `verify-response`, `answer-keys`, `db` |
//! | [`progress`] | progress of long work: a bar on a terminal, a periodic log line otherwise |
//! | [`dev::bench`] | dev tool: `lienthong bench`, the pipeline against a bare hyper + rustls baseline |
//! | [`client`] | a small mTLS HTTP client used by the CLI, the tests and the benchmarks |
//! | [`dev::certs`] | dev tool: rcgen-made development PKI (`demo`, `certs init`) |
//! | [`dev::population`] | dev tool: a synthetic, deterministic population for the demo and benchmarks |
//! | [`dev::demo`] | dev tool: `lienthong demo`: dev certificates, sample data and a running broker |

pub mod accountability;
pub mod admin;
pub mod admission;
pub mod audit;
pub mod audit_api;
pub mod billing;
pub mod broker;
pub mod canonical;
pub mod catalogue;
pub mod checkpoint;
pub mod citizen_id;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connector;
pub mod console;
pub mod dcc;
pub mod dev;
pub mod doors;
pub mod error;
pub mod exchange;
pub mod field_path;
pub mod identity;
pub mod import;
pub mod json;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod policy;
pub mod postgres;
pub mod progress;
pub mod qr;
pub mod quota;
pub mod record;
pub mod registry;
pub mod schema;
pub mod server;
pub mod signed_answer;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod upstream;
pub mod xroad_id;
