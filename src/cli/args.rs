//! The command line as clap parses it: the commands, their flags and sub-commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// lienthong — the mTLS broker through which agencies share citizen data, per purpose, audited.
#[derive(Debug, Parser)]
#[command(name = "lienthong", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a working broker on embedded defaults: dev certificates, sample data, ports 8443/8444.
    Demo {
        /// Synthetic citizens to seed into an empty store.
        #[arg(long, default_value_t = 10_000)]
        citizens: usize,
        /// Development PKI folder.
        #[arg(long, default_value = "certs/demo")]
        certs_dir: PathBuf,
        /// Data folder.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// Agency listener address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        agency_addr: String,
        /// Admin listener address.
        #[arg(long, default_value = "127.0.0.1:8444")]
        admin_addr: String,
        /// sled's page cache in MiB (`storage.cache_mb`, default 64): more keeps more of a large
        /// population's pages in memory.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        cache_mb: Option<u64>,
        /// Run a provider (a population database) and this broker in front of it in upstream provider
        /// mode: the provider is a second process (`demo --provider`) under DATA_DIR/provider.
        #[arg(long, conflicts_with = "provider")]
        upstream: bool,
        /// Run as the provider of `--upstream`: the demo with the front broker registered as an agency.
        #[arg(long)]
        provider: bool,
        /// Run as the front broker of `--upstream` only, in front of a provider (`demo --provider`)
        /// already listening at this address.
        #[arg(long, value_name = "PROVIDER_ADDR", conflicts_with_all = ["upstream", "provider"])]
        front_of: Option<String>,
        /// With `--upstream`: the provider's agency listener.
        #[arg(long, default_value = "127.0.0.1:8445")]
        provider_addr: String,
        /// With `--upstream`: the provider's admin listener.
        #[arg(long, default_value = "127.0.0.1:8446")]
        provider_admin_addr: String,
    },
    /// Run the broker from a config file.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "lienthong.toml")]
        config: PathBuf,
    },
    /// Check a config file and exit (0 valid, 2 invalid).
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = "lienthong.toml")]
        config: PathBuf,
    },
    /// Development certificates.
    Certs {
        /// What to do.
        #[command(subcommand)]
        action: CertsCommand,
    },
    /// The audit trail, offline: works on a stopped broker's data dir (the admin API has the same checks
    /// on a running one: `/admin/v1/audit/verify`).
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// The monthly billing report and its reconciliation with the audit trail (through the admin API).
    Billing {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: BillingCommand,
    },
    /// The yearly service catalogue: load a new version, list the versions, diff two (through the
    /// admin API).
    Catalogue {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: CatalogueCommand,
    },
    /// Benchmark the whole pipeline against a bare hyper + rustls baseline (see `BENCHMARKS.md`).
    Bench(crate::dev::bench::BenchArgs),
    /// The PostgreSQL database of a cluster (`storage.backend = "postgres"`).
    Db {
        /// What to do.
        #[command(subcommand)]
        action: super::db::DbCommand,
    },
    /// Load citizens into a running broker through its admin API.
    Citizens {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: CitizensCommand,
    },
    /// EU Digital COVID Certificates, offline.
    Dcc {
        /// What to do.
        #[command(subcommand)]
        action: DccCommand,
    },
    /// Check a saved agency-listener answer against its `x-jws-signature` header and the broker's published
    /// keys (the JWKS from `/.well-known/jwks.json`), offline: exit 0 valid, 1 not, with the reason.
    VerifyResponse(VerifyResponseArgs),
    /// The key that signs every agency-listener answer.
    AnswerKeys {
        /// What to do.
        #[command(subcommand)]
        action: AnswerKeysCommand,
    },
    /// Manage agencies through a running broker's admin API.
    Agency {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
        /// What to do.
        #[command(subcommand)]
        action: AgencyCommand,
    },
}

/// `lienthong certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make (or complete) a development PKI: CA, server, CRL and one client certificate per name.
    Init {
        /// Folder to write into.
        #[arg(long, default_value = "certs/demo")]
        dir: PathBuf,
        /// Client certificate names (agency codes and `admin`).
        #[arg(long = "client", default_values_t = ["moh".to_string(), "pccovid".into(), "dvc".into(), "admin".into()])]
        clients: Vec<String>,
    },
}

/// `lienthong citizens …`
#[derive(Debug, Subcommand)]
pub enum CitizensCommand {
    /// Import canonical records from a JSON Lines file (one record per line), validated against the
    /// canonical schema; sent in batches, each written all or nothing; refused lines reported by number.
    Import {
        /// The JSON Lines file.
        file: PathBuf,
        /// Lines per batch (each batch must also fit `limits.max_body_bytes`).
        #[arg(long, default_value_t = 500)]
        batch_lines: usize,
    },
}

/// `lienthong audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole chain and the signed checkpoints: exit 0 with the count and head hash, or exit 1
    /// naming the first broken or missing entry.
    Verify {
        /// The broker's data dir (the trail is in its `audit/` folder).
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// A witness kept outside the data dir (`audit.witness`, or saved `GET /admin/v1/audit/checkpoint`
        /// answers, one per line): fail if the trail is shorter than, or diverges from, what it saw.
        #[arg(long)]
        witness: Option<PathBuf>,
        /// Verify every broker's chain and seal in this PostgreSQL database (connection URL) instead.
        #[command(flatten)]
        database: super::db::DatabaseArgs,
    },
    /// Write entries as JSON Lines (for an archive or a SIEM), `--from` inclusive, `--to` exclusive.
    Export {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// RFC 3339 start time.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end time.
        #[arg(long)]
        to: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Export every broker's chain from this PostgreSQL database (connection URL) instead: chain by
        /// chain, in seq order within each.
        #[command(flatten)]
        database: super::db::DatabaseArgs,
    },
    /// Ask a running broker to sign its head now and print it as one witness line (JSON) on standard
    /// output: append it to a file kept off the broker host, for `audit verify --witness`.
    Checkpoint {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Sign the `base.json` of a trail pruned before bases were signed, so it verifies again. Check the
    /// base against the archive that ends where it begins first: this vouches for it. Stopped broker.
    SignBase {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// The folder of the signing key (default: the data dir's sibling `<name>-keys`).
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
    /// Retention: move whole segments older than `--before` into an archive file and delete them; what is
    /// left still verifies (the archive carries the hash it continues from). Run on a stopped broker.
    Prune {
        /// The broker's data dir.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// RFC 3339 cut-off: entries before it may go.
        #[arg(
            long,
            required_unless_present = "older_than_days",
            conflicts_with = "older_than_days"
        )]
        before: Option<String>,
        /// Retention by age: entries older than this many days may go (e.g. from a cron job).
        #[arg(long)]
        older_than_days: Option<u32>,
        /// Archive file to write (JSON Lines).
        #[arg(long)]
        archive: PathBuf,
        /// The folder of the signing key (`audit.key_dir`; default: the data dir's sibling `<name>-keys`):
        /// the base left by the prune is signed.
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
}

/// `lienthong dcc …`
#[derive(Debug, Subcommand)]
pub enum DccCommand {
    /// Verify an `HC1:` string against a trust list of Document Signer certificates: exit 0 valid (the
    /// DCC JSON is printed), 1 invalid with the reason (bad_prefix, base45, zlib, cose_structure,
    /// unknown_kid, bad_signature, dsc_not_valid, expired, schema_violation), 2 usage.
    Verify {
        /// The `HC1:` string (or give --file).
        #[arg(required_unless_present = "file")]
        hc1: Option<String>,
        /// A file holding the `HC1:` string.
        #[arg(long, conflicts_with = "hc1")]
        file: Option<PathBuf>,
        /// Trusted Document Signer certificates (PEM files), e.g. certs/demo/dcc-dsc.pem.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// Check at this RFC 3339 instant instead of now.
        #[arg(long)]
        at: Option<String>,
    },
}

/// `lienthong verify-response …`
#[derive(Debug, Args)]
pub struct VerifyResponseArgs {
    /// The answer body exactly as received.
    #[arg(long)]
    pub body: PathBuf,
    /// The `x-jws-signature` header value (or give --signature-file).
    #[arg(long, required_unless_present = "signature_file")]
    pub signature: Option<String>,
    /// A file holding the `x-jws-signature` header value.
    #[arg(long, conflicts_with = "signature")]
    pub signature_file: Option<PathBuf>,
    /// The broker's published keys (saved from `GET /.well-known/jwks.json`).
    #[arg(long)]
    pub jwks: PathBuf,
    /// The `x-request-id` the answer came with: it must be the one signed.
    #[arg(long)]
    pub request_id: Option<String>,
    /// The agency expected in the signature.
    #[arg(long)]
    pub agency: Option<String>,
    /// The purpose expected in the signature.
    #[arg(long)]
    pub purpose: Option<String>,
}

/// `lienthong answer-keys …`
#[derive(Debug, Subcommand)]
pub enum AnswerKeysCommand {
    /// Make a new answer-signing key; the old public key stays published so earlier answers still verify.
    /// Run on a stopped broker (it takes effect at the next start).
    Rotate {
        /// Where the keys are.
        #[command(flatten)]
        keys: AnswerKeysDir,
    },
    /// Print the published keys (JWKS), current first.
    Show {
        /// Where the keys are.
        #[command(flatten)]
        keys: AnswerKeysDir,
    },
}

/// Where a broker's answer-signing keys are: `answer-keys/` in its `audit.key_dir`.
#[derive(Debug, Args)]
pub struct AnswerKeysDir {
    /// The broker's data dir (`storage.data_dir`).
    #[arg(long, default_value = "data/demo")]
    pub data_dir: PathBuf,
    /// The broker's `audit.key_dir`, when its config sets one (default: `<data_dir>-keys` beside the data
    /// dir, as the broker's own default).
    #[arg(long)]
    pub key_dir: Option<PathBuf>,
}

impl AnswerKeysDir {
    /// The key folder in force.
    pub fn key_dir(&self) -> PathBuf {
        self.key_dir
            .clone()
            .unwrap_or_else(|| crate::audit::default_key_dir(&self.data_dir))
    }
}

/// `lienthong billing …`
#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Per agency and purpose: calls served, refused for quota, unit price, amount, exemption.
    Report {
        /// The month, `YYYY-MM` (default: this month).
        #[arg(long)]
        month: Option<String>,
        /// `csv` or `json`.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Recompute the month from the audit trail; exit 1 if the counters differ.
    Reconcile {
        /// The month, `YYYY-MM` (default: this month).
        #[arg(long)]
        month: Option<String>,
    },
    /// Freeze a month that is over: its report, signed with the broker's audit key together with the
    /// audit chain head it was computed from, exported as CSV or JSON.
    Close {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
        /// `csv` or `json`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Write the export here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `lienthong catalogue …`
#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Load a new version from a file with a `[release]` table (`version`, `effective`); it is checked
    /// fully first and refused with FILE:LINE, the running version kept.
    Load {
        /// The catalogue file (TOML).
        file: PathBuf,
    },
    /// Every version, past, in force and scheduled.
    Versions,
    /// What changed between two versions (default `--to`: the one in force).
    Diff {
        /// The earlier version.
        #[arg(long)]
        from: String,
        /// The later version.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Where the admin API is and which certificate to present.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Admin listener address.
    #[arg(long, default_value = "127.0.0.1:8444", global = true)]
    pub admin_addr: SocketAddr,
    /// CA bundle to trust.
    #[arg(long, default_value = "certs/demo/ca.pem", global = true)]
    pub cacert: PathBuf,
    /// Admin client certificate.
    #[arg(long, default_value = "certs/demo/admin.pem", global = true)]
    pub cert: PathBuf,
    /// Admin client key.
    #[arg(long, default_value = "certs/demo/admin.key", global = true)]
    pub key: PathBuf,
}

/// `lienthong agency …`
#[derive(Debug, Subcommand)]
pub enum AgencyCommand {
    /// List agencies.
    List,
    /// Show one agency.
    Show {
        /// Agency code.
        code: String,
    },
    /// Register an agency.
    Add {
        /// Agency code (a-z, 0-9, '-').
        code: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// `billed` or `state-budget`.
        #[arg(long, default_value = "billed")]
        billing_class: String,
        /// A PEM certificate to bind right away.
        #[arg(long)]
        cert_file: Option<PathBuf>,
    },
    /// Bind a certificate (file or fingerprint) to an agency.
    Bind {
        /// Agency code.
        code: String,
        /// A PEM certificate file.
        #[arg(long, conflicts_with = "fingerprint")]
        cert_file: Option<PathBuf>,
        /// A SHA-256 fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Unbind a certificate fingerprint from an agency.
    Unbind {
        /// Agency code.
        code: String,
        /// The SHA-256 fingerprint.
        fingerprint: String,
    },
    /// Suspend an agency (its requests get 403 `agency_suspended`).
    Suspend {
        /// Agency code.
        code: String,
    },
    /// Resume a suspended agency.
    Resume {
        /// Agency code.
        code: String,
    },
    /// Set the quota plan for one purpose (or `*`, every purpose); leave a limit out for no limit.
    Plan {
        /// Agency code.
        code: String,
        /// Purpose id, or `*`.
        #[arg(long, default_value = "*")]
        purpose: String,
        /// Calls per minute.
        #[arg(long)]
        per_minute: Option<u64>,
        /// Calls per day.
        #[arg(long)]
        per_day: Option<u64>,
        /// Calls per month.
        #[arg(long)]
        per_month: Option<u64>,
    },
    /// Grant a purpose to an agency (audited, effective on its next request, kept across restarts).
    Grant {
        /// Agency code.
        code: String,
        /// Purpose id from the catalogue (`GET /v1/catalogue`, `schemas/purposes.toml`).
        purpose: String,
    },
    /// Revoke a purpose granted with `grant` (grants written in the catalogue file stay).
    Revoke {
        /// Agency code.
        code: String,
        /// Purpose id.
        purpose: String,
    },
    /// Set the billing class: `billed` or `state-budget`.
    BillingClass {
        /// Agency code.
        code: String,
        /// `billed` or `state-budget`.
        class: String,
    },
    /// Quota use in the current windows, per purpose.
    Usage {
        /// Agency code.
        code: String,
    },
    /// Bind the agency's X-Road member or subsystem (the only X-Road client its requests may name), or
    /// clear it with `--clear`.
    Xroad {
        /// Agency code.
        code: String,
        /// `INSTANCE/CLASS/MEMBER[/SUBSYSTEM]`, e.g. `VN/GOV/000.00.00.H26/dvc`.
        #[arg(required_unless_present = "clear")]
        client: Option<String>,
        /// Remove the agency's X-Road identity.
        #[arg(long, conflicts_with = "client")]
        clear: bool,
    },
}
