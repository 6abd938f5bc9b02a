//! Versioned, idempotent schema migrations, run at start-up (and alone by `lienthong db migrate`).
//!
//! `lienthong_schema_version` holds one row per migration applied. All of them run in one transaction
//! under an advisory lock, so brokers starting together migrate once and never see half a schema. A
//! database whose version is newer than this broker knows is refused, naming both versions: an old broker
//! must not write into a schema it does not understand.

use deadpool_postgres::Client;

/// One schema change.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In order; append only (a released migration never changes).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "citizen records",
        sql: "CREATE TABLE citizens (
                  citizen_id text PRIMARY KEY,
                  record jsonb NOT NULL,
                  updated_at timestamptz NOT NULL DEFAULT now()
              );",
    },
    Migration {
        version: 2,
        name: "audit chains, append-only",
        sql: "CREATE TABLE audit_chains (
                  chain_id uuid PRIMARY KEY,
                  node text NOT NULL,
                  started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                  continues_chain uuid REFERENCES audit_chains (chain_id),
                  continues_seq bigint,
                  continues_hash text NOT NULL
              );
              CREATE TABLE audit_entries (
                  id bigserial UNIQUE,
                  chain_id uuid NOT NULL REFERENCES audit_chains (chain_id),
                  seq bigint NOT NULL,
                  time timestamptz NOT NULL,
                  agency text,
                  citizen_id text,
                  status integer NOT NULL,
                  hash text NOT NULL,
                  line text NOT NULL,
                  PRIMARY KEY (chain_id, seq)
              );
              CREATE INDEX audit_entries_time ON audit_entries (time);
              CREATE INDEX audit_entries_citizen ON audit_entries (citizen_id, id)
                  WHERE citizen_id IS NOT NULL;
              CREATE FUNCTION lienthong_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN
                  RAISE EXCEPTION 'lienthong: % is append-only (% refused)', TG_TABLE_NAME, TG_OP;
              END $$;
              CREATE TRIGGER audit_chains_append_only
                  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_chains
                  FOR EACH STATEMENT EXECUTE FUNCTION lienthong_append_only();
              CREATE TRIGGER audit_entries_append_only
                  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_entries
                  FOR EACH STATEMENT EXECUTE FUNCTION lienthong_append_only();
              REVOKE UPDATE, DELETE, TRUNCATE ON audit_chains, audit_entries FROM PUBLIC;",
    },
    Migration {
        version: 3,
        name: "quota counters and monthly totals",
        sql: "CREATE TABLE quota_use (
                  agency text NOT NULL,
                  purpose text NOT NULL,
                  win text NOT NULL,
                  label text NOT NULL,
                  used bigint NOT NULL DEFAULT 0,
                  PRIMARY KEY (agency, purpose, win, label)
              );
              CREATE TABLE quota_totals (
                  month text NOT NULL,
                  agency text NOT NULL,
                  purpose text NOT NULL,
                  kind text NOT NULL,
                  calls bigint NOT NULL DEFAULT 0,
                  PRIMARY KEY (month, agency, purpose, kind)
              );",
    },
    Migration {
        version: 4,
        name: "agency registry",
        sql: "CREATE SEQUENCE agencies_version;
              CREATE TABLE agencies (
                  code text PRIMARY KEY,
                  agency jsonb NOT NULL,
                  version bigint NOT NULL
              );",
    },
    Migration {
        version: 5,
        name: "audit seals, append-only",
        sql: "CREATE TABLE audit_seals (
                  id bigserial PRIMARY KEY,
                  time text NOT NULL,
                  sealed_at timestamptz NOT NULL DEFAULT now(),
                  node text NOT NULL,
                  heads jsonb NOT NULL,
                  public_key text NOT NULL,
                  signature text NOT NULL
              );
              CREATE TRIGGER audit_seals_append_only
                  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_seals
                  FOR EACH STATEMENT EXECUTE FUNCTION lienthong_append_only();
              REVOKE UPDATE, DELETE, TRUNCATE ON audit_seals FROM PUBLIC;",
    },
    Migration {
        version: 6,
        name: "checkpoints and check-ins",
        // Times as fixed-width RFC 3339 text (the embedded index's keys), so ranges compare as there.
        sql: "CREATE TABLE checkpoints (
                  id text PRIMARY KEY,
                  agency text NOT NULL,
                  checkpoint jsonb NOT NULL
              );
              CREATE INDEX checkpoints_agency ON checkpoints (agency);
              CREATE TABLE checkins (
                  checkpoint text NOT NULL,
                  time text NOT NULL,
                  citizen_id text NOT NULL,
                  PRIMARY KEY (checkpoint, time, citizen_id)
              );",
    },
    Migration {
        version: 7,
        name: "closed billing months, billing-class changes",
        // A month is closed once for the whole cluster; a closed month never changes.
        sql: "CREATE TABLE billing_closed (
                  month text PRIMARY KEY,
                  closed jsonb NOT NULL,
                  stored_at timestamptz NOT NULL DEFAULT now()
              );
              CREATE TRIGGER billing_closed_append_only
                  BEFORE UPDATE OR DELETE OR TRUNCATE ON billing_closed
                  FOR EACH STATEMENT EXECUTE FUNCTION lienthong_append_only();
              REVOKE UPDATE, DELETE, TRUNCATE ON billing_closed FROM PUBLIC;
              CREATE TABLE billing_class_changes (
                  id bigserial PRIMARY KEY,
                  agency text NOT NULL,
                  change jsonb NOT NULL
              );
              CREATE INDEX billing_class_changes_agency ON billing_class_changes (agency, id);",
    },
];

/// The schema version this broker writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `pg_advisory_xact_lock` key of the migration ("lienthon" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c69_656e_7468_6f6e;

/// What a migration run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The database's version before.
    pub from: i32,
    /// Its version now ([`SCHEMA_VERSION`]).
    pub to: i32,
}

/// Why the schema could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// A newer broker has migrated this database.
    #[error(
        "database schema version {database} is newer than this broker understands (version {broker}); \
         upgrade the broker"
    )]
    Newer {
        /// The database's version.
        database: i32,
        /// This broker's [`SCHEMA_VERSION`].
        broker: i32,
    },
    /// The database failed or refused.
    #[error("migrating the database: {0}")]
    Database(String),
}

/// Bring the schema to [`SCHEMA_VERSION`]; a no-op when it is there already.
pub async fn migrate(client: &mut Client) -> Result<Migrated, MigrateError> {
    let db = |e: tokio_postgres::Error| MigrateError::Database(e.to_string());
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    // "relation … already exists, skipping" on every start is noise.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS lienthong_schema_version (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db)?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM lienthong_schema_version",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if from > SCHEMA_VERSION {
        return Err(MigrateError::Newer {
            database: from,
            broker: SCHEMA_VERSION,
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(migration.sql).await.map_err(|e| {
            MigrateError::Database(format!(
                "migration {} ({}): {e}",
                migration.version, migration.name
            ))
        })?;
        tx.execute(
            "INSERT INTO lienthong_schema_version (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    if from < SCHEMA_VERSION {
        tracing::info!(from, to = SCHEMA_VERSION, "database schema migrated");
    }
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}
