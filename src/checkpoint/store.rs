//! Stage: store (checkpoints). Registered checkpoints and the index of check-ins by checkpoint and time,
//! in the broker's sled database; held by the broker, used by the checkpoint channel ([`super`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

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

/// Registered checkpoints and the index of check-ins by checkpoint and time.
pub struct Checkpoints {
    registry: sled::Tree,
    by_checkpoint: sled::Tree,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("checkpoints", e)
}

/// Fixed-width UTC time, so index keys sort by time.
pub(super) fn key_time(t: DateTime<Utc>) -> String {
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

    /// A checkpoint by id.
    pub fn get(&self, id: &str) -> Result<Option<Checkpoint>, ApiError> {
        match self.registry.get(id.as_bytes()).map_err(store_error)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(store_error)?)),
            None => Ok(None),
        }
    }

    /// The checkpoints one agency runs.
    pub fn for_agency(&self, agency: &str) -> Result<Vec<Checkpoint>, ApiError> {
        let mut out = Vec::new();
        for item in self.registry.iter() {
            let (_, bytes) = item.map_err(store_error)?;
            let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(store_error)?;
            if cp.agency == agency {
                out.push(cp);
            }
        }
        Ok(out)
    }

    pub(super) async fn register(&self, agency: &str, new: NewCheckpoint) -> Result<Checkpoint, ApiError> {
        let id_ok = (2..=64).contains(&new.id.len())
            && new
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !new.id.starts_with('-');
        if !id_ok {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "a checkpoint id is 2-64 of a-z, 0-9 and '-'",
            ));
        }
        if new.name.trim().is_empty() || new.address.trim().is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "name and address must not be empty",
            ));
        }
        if crate::schema::has_control_char(&new.name) || crate::schema::has_control_char(&new.address) {
            return Err(ApiError::new(
                ErrorCode::InvalidCheckpoint,
                "name and address must not contain control characters",
            ));
        }
        let cp = Checkpoint {
            id: new.id,
            agency: agency.to_string(),
            name: new.name.trim().to_string(),
            address: new.address.trim().to_string(),
            kind: new.kind,
            created_at: key_time(Utc::now()),
        };
        let bytes = serde_json::to_vec(&cp).map_err(store_error)?;
        // compare_and_swap from "absent" makes registration race-free.
        match self
            .registry
            .compare_and_swap(cp.id.as_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(store_error)?
        {
            Ok(()) => {
                crate::store::durable_flush(&self.registry)
                    .await
                    .map_err(store_error)?;
                Ok(cp)
            }
            Err(_) => Err(ApiError::new(
                ErrorCode::CheckpointExists,
                format!("checkpoint {} is already registered", cp.id),
            )),
        }
    }

    pub(super) async fn index(
        &self,
        checkpoint: &str,
        time: DateTime<Utc>,
        citizen: &str,
    ) -> Result<(), ApiError> {
        let key = format!("{checkpoint}\u{0}{}\u{0}{citizen}", key_time(time));
        self.by_checkpoint
            .insert(key.as_bytes(), &[])
            .map_err(store_error)?;
        crate::store::durable_flush(&self.by_checkpoint)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Check-ins at `checkpoint` with `from <= time < to`, in time order: (citizen ID, time).
    pub fn checkins(
        &self,
        checkpoint: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, ApiError> {
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
    }
}
