//! Stage: store (checkpoints). Registered checkpoints and the index of check-ins by checkpoint and time,
//! behind the [`CheckpointStore`] seam: the broker's sled database ([`Checkpoints`]) or PostgreSQL (shared
//! by a cluster, `postgres::checkpoints`); held by the broker, used by the checkpoint front door
//! (`doors::checkpoint`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};
use crate::store::StoreFuture;

/// What kind of place runs the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A state agency's gate.
    Agency,
    /// A business or factory.
    Business,
    /// A restaurant.
    Restaurant,
    /// A hotel.
    Hotel,
    /// A supermarket or market.
    Supermarket,
    /// Anything else (patrol, event).
    Other,
}

/// A registered checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stable id, `a-z0-9-`, 2..=64.
    pub id: String,
    /// The agency that registered and runs it.
    pub agency: String,
    /// Display name, e.g. `Siêu thị Co.opmart Cống Quỳnh`.
    pub name: String,
    /// Address, one line.
    pub address: String,
    /// Kind of place.
    pub kind: CheckpointKind,
    /// When it was registered, RFC 3339.
    pub created_at: String,
}

/// A registration request's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCheckpoint {
    id: String,
    name: String,
    address: String,
    kind: CheckpointKind,
}

/// Where checkpoints and the check-in index live.
pub trait CheckpointStore: Send + Sync {
    /// A checkpoint by id.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Checkpoint>>;
    /// The checkpoints one agency runs.
    fn for_agency<'a>(&'a self, agency: &'a str) -> StoreFuture<'a, Vec<Checkpoint>>;
    /// Store a new checkpoint, durable on return: 409 `checkpoint_exists` if the id is taken.
    fn insert<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()>;
    /// Index one check-in, durable on return.
    fn index<'a>(&'a self, checkpoint: &'a str, time: DateTime<Utc>, citizen: &'a str)
        -> StoreFuture<'a, ()>;
    /// Check-ins at `checkpoint` with `from <= time < to`, in time order: (citizen ID, time).
    fn checkins<'a>(
        &'a self,
        checkpoint: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<(String, String)>>;
}

/// 409 `checkpoint_exists`.
pub fn checkpoint_exists(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::CheckpointExists,
        format!("checkpoint {id} is already registered"),
    )
}

impl NewCheckpoint {
    /// The checkpoint `agency` registers: 422 `invalid_checkpoint` for a bad id, name or address.
    pub(super) fn into_checkpoint(self, agency: &str) -> Result<Checkpoint, ApiError> {
        let id_ok = (2..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.id.starts_with('-');
        if !id_ok {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "a checkpoint id is 2-64 of a-z, 0-9 and '-'",
            ));
        }
        if self.name.trim().is_empty() || self.address.trim().is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "name and address must not be empty",
            ));
        }
        if crate::schema::has_control_char(&self.name) || crate::schema::has_control_char(&self.address) {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "name and address must not contain control characters",
            ));
        }
        Ok(Checkpoint {
            id: self.id,
            agency: agency.to_string(),
            name: self.name.trim().to_string(),
            address: self.address.trim().to_string(),
            kind: self.kind,
            created_at: key_time(Utc::now()),
        })
    }
}

/// Registered checkpoints and the index of check-ins by checkpoint and time, in sled.
pub struct Checkpoints {
    registry: sled::Tree,
    by_checkpoint: sled::Tree,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("checkpoints", e)
}

/// Fixed-width UTC time, so index keys sort by time.
pub fn key_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Checkpoints {
    /// Open the `checkpoints` and `checkins_by_checkpoint` trees.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            registry: db.open_tree("checkpoints")?,
            by_checkpoint: db.open_tree("checkins_by_checkpoint")?,
        })
    }
}

impl CheckpointStore for Checkpoints {
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Checkpoint>> {
        Box::pin(async move {
            match self.registry.get(id.as_bytes()).map_err(store_error)? {
                Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
                None => Ok(None),
            }
        })
    }

    fn for_agency<'a>(&'a self, agency: &'a str) -> StoreFuture<'a, Vec<Checkpoint>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for item in self.registry.iter() {
                let (_, bytes) = item.map_err(store_error)?;
                let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(store_error)?;
                if cp.agency == agency {
                    out.push(cp);
                }
            }
            Ok(out)
        })
    }

    fn insert<'a>(&'a self, cp: &'a Checkpoint) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let bytes = serde_json::to_vec(cp).map_err(store_error)?;
            // compare_and_swap from "absent" makes registration race-free.
            match self
                .registry
                .compare_and_swap(cp.id.as_bytes(), None as Option<&[u8]>, Some(bytes))
                .map_err(store_error)?
            {
                Ok(()) => crate::store::durable_flush(&self.registry)
                    .await
                    .map_err(store_error),
                Err(_) => Err(checkpoint_exists(&cp.id)),
            }
        })
    }

    fn index<'a>(
        &'a self,
        checkpoint: &'a str,
        time: DateTime<Utc>,
        citizen: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = format!("{checkpoint}\u{0}{}\u{0}{citizen}", key_time(time));
            self.by_checkpoint
                .insert(key.as_bytes(), &[])
                .map_err(store_error)?;
            crate::store::durable_flush(&self.by_checkpoint)
                .await
                .map_err(store_error)
        })
    }

    fn checkins<'a>(
        &'a self,
        checkpoint: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<(String, String)>> {
        Box::pin(async move {
            let start = format!("{checkpoint}\u{0}{}", key_time(from));
            let end = format!("{checkpoint}\u{0}{}", key_time(to));
            let mut out = Vec::new();
            for item in self.by_checkpoint.range(start.as_bytes()..end.as_bytes()) {
                let (key, _) = item.map_err(store_error)?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let mut parts = key.split('\u{0}').skip(1);
                if let (Some(time), Some(citizen)) = (parts.next(), parts.next()) {
                    out.push((citizen.to_string(), time.to_string()));
                }
            }
            Ok(out)
        })
    }
}
