//! The yearly service catalogue: versions of the purpose catalogue (`policy::Catalogue`), each
//! with an identifier (e.g. `2027`) and the instant it takes effect. The Ministry republishes the
//! catalogue every year; the broker holds every version it knows and serves each request with the one in
//! force at the request's instant, chosen once when the request starts, so no request ever sees a mix.
//!
//! The version in the configured file (`catalogue.purposes`) is the base. Later versions are loaded
//! through the admin API (or `lienthong catalogue load`), checked fully before they are accepted, and
//! kept in the sled tree `catalogue_versions`, so they survive a restart; the switch at the effective
//! instant needs no restart.
//!
//! A version file is a purpose catalogue with a `[release]` table:
//!
//! ```toml
//! [release]
//! version = "2027"
//! effective = "2027-01-01T00:00:00+07:00"   # or "2027-01-01": midnight, Vietnam time
//! ```

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorCode};
use crate::policy::{Catalogue, CatalogueError, Purpose};
use crate::schema::CitizenSchema;

/// The identifier of a base catalogue whose file has no `[release]` table.
pub const INITIAL_VERSION: &str = "initial";

/// One version of the catalogue.
#[derive(Debug)]
pub struct CatalogueVersion {
    /// Identifier, e.g. `2027`.
    pub id: String,
    /// When it takes effect; the base version without a `[release]` table is in force from the start.
    pub effective_at: DateTime<Utc>,
    /// The file it was loaded from (as named by the operator).
    pub origin: String,
    /// The purposes, checked against the schema.
    pub catalogue: Catalogue,
}

impl Deref for CatalogueVersion {
    type Target = Catalogue;

    fn deref(&self) -> &Catalogue {
        &self.catalogue
    }
}

impl CatalogueVersion {
    /// A version from a checked catalogue: its `[release]` names it, or it is the [`INITIAL_VERSION`].
    pub fn new(catalogue: Catalogue, origin: &str) -> Self {
        let (id, effective_at) = match catalogue.release() {
            Some(r) => (r.version.clone(), r.effective_at),
            None => (INITIAL_VERSION.to_string(), DateTime::<Utc>::UNIX_EPOCH),
        };
        Self {
            id,
            effective_at,
            origin: origin.to_string(),
            catalogue,
        }
    }

    /// What `GET /v1/catalogue/versions` says of it.
    pub fn summary(&self, in_force: &str) -> Value {
        json!({
            "version": self.id,
            "effective_at": vietnam_time(self.effective_at),
            "in_force": self.id == in_force,
            "purposes": self.all().len(),
        })
    }
}

/// An instant as Vietnam time, RFC 3339 with its `+07:00` offset.
pub fn vietnam_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&crate::clock::vietnam())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A purpose as authorized for one request, in the version that serves the request.
#[derive(Debug, Clone)]
pub struct PurposeInForce {
    version: Arc<CatalogueVersion>,
    index: usize,
}

impl Deref for PurposeInForce {
    type Target = Purpose;

    fn deref(&self) -> &Purpose {
        // `index` was found in this very version's purposes.
        &self.version.all()[self.index]
    }
}

/// The declared purpose in `version`, checked for this agency: 400 `unknown_purpose`, 403
/// `purpose_not_allowed`.
pub fn authorize(
    version: &Arc<CatalogueVersion>,
    purpose: &str,
    agency: &str,
) -> Result<PurposeInForce, ApiError> {
    let found = version.authorize(purpose, agency)?;
    let index = version
        .all()
        .iter()
        .position(|p| std::ptr::eq(p, found))
        .ok_or_else(|| ApiError::internal("an authorized purpose is missing from its catalogue"))?;
    Ok(PurposeInForce {
        version: Arc::clone(version),
        index,
    })
}

/// A version as kept in the sled tree: the file's text, checked again at every start.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    origin: String,
    loaded_at: String,
    source: String,
}

/// Every version the broker knows, by effective instant.
pub struct Catalogues {
    tree: sled::Tree,
    versions: RwLock<Arc<Vec<Arc<CatalogueVersion>>>>,
    /// Serialises loads, so that two loads cannot both pass the "new id, new instant" checks.
    writer: tokio::sync::Mutex<()>,
}

fn store_err(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("catalogue versions", e)
}

impl Catalogues {
    /// The base version and every version kept in `db`, each checked again against `schema`. A kept
    /// version that no longer passes (the schema changed under it) stops the start, naming it.
    pub fn open(db: &sled::Db, base: CatalogueVersion, schema: &CitizenSchema) -> Result<Self, String> {
        let tree = db.open_tree("catalogue_versions").map_err(|e| e.to_string())?;
        let mut versions = vec![Arc::new(base)];
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| e.to_string())?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let stored: StoredVersion =
                serde_json::from_slice(&value).map_err(|e| format!("catalogue version {id}: {e}"))?;
            let catalogue = Catalogue::from_str(&stored.source, &stored.origin, schema)
                .map_err(|e| format!("catalogue version {id} (loaded {}): {e}", stored.loaded_at))?;
            let version = CatalogueVersion::new(catalogue, &stored.origin);
            if versions.iter().any(|v| v.id == version.id) {
                // The configured file is now this version itself: the file wins.
                tracing::info!(version = %version.id, "catalogue version is also the configured base");
                continue;
            }
            versions.push(Arc::new(version));
        }
        versions.sort_by_key(|v| v.effective_at);
        Ok(Self {
            tree,
            versions: RwLock::new(Arc::new(versions)),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Every version, oldest effective instant first.
    pub fn list(&self) -> Arc<Vec<Arc<CatalogueVersion>>> {
        match self.versions.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The version in force at `t`: the last to take effect at or before `t` (the earliest before any).
    pub fn at(&self, t: DateTime<Utc>) -> Arc<CatalogueVersion> {
        let versions = self.list();
        let after = versions.partition_point(|v| v.effective_at <= t);
        Arc::clone(&versions[after.saturating_sub(1)])
    }

    /// The version with this identifier.
    /// Apply an agency's run-time purpose grants to every version held (grants are the registry's, not a
    /// version's: a version switch keeps them).
    pub fn set_grants(&self, agency: &str, purposes: &[String]) {
        for version in self.list().iter() {
            version.set_grants(agency, purposes);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<CatalogueVersion>> {
        self.list().iter().find(|v| v.id == id).cloned()
    }

    /// The version with this identifier: 404 `unknown_catalogue_version` otherwise.
    pub fn require(&self, id: &str) -> Result<Arc<CatalogueVersion>, ApiError> {
        self.get(id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownCatalogueVersion,
                format!("no catalogue version {id:?}"),
            )
        })
    }

    /// Accept a new version from `text` (the file `origin`), effective at its `[release]` instant.
    /// `check` refuses what only the broker knows (agencies, connectors); it is given the parsed version.
    /// 422 `invalid_catalogue` naming file and line; 409 `catalogue_version_exists` for a known id;
    /// 409 `catalogue_effective_conflict` for an instant already past or already taken. On any refusal
    /// nothing changes; on success the version is durable before it is answered.
    pub async fn load(
        &self,
        text: &str,
        origin: &str,
        schema: &CitizenSchema,
        is_agency: &(dyn Fn(&str) -> bool + Sync),
        check: impl FnOnce(&CatalogueVersion) -> Result<(), String>,
        now: DateTime<Utc>,
    ) -> Result<Arc<CatalogueVersion>, ApiError> {
        let invalid = |message: String| ApiError::new(ErrorCode::InvalidCatalogue, message);
        let catalogue =
            Catalogue::from_str_checked(text, origin, schema, is_agency).map_err(|e| match e {
                CatalogueError::Invalid { .. } => invalid(e.to_string()),
                CatalogueError::Io { .. } => ApiError::internal(e),
            })?;
        if catalogue.release().is_none() {
            return Err(invalid(format!(
                "{origin}:1: a new catalogue version needs a [release] table with `version` and `effective`"
            )));
        }
        let version = CatalogueVersion::new(catalogue, origin);
        check(&version).map_err(|e| invalid(format!("{origin}: {e}")))?;
        let _guard = self.writer.lock().await;
        let known = self.list();
        if known.iter().any(|v| v.id == version.id) {
            return Err(ApiError::new(
                ErrorCode::CatalogueVersionExists,
                format!(
                    "catalogue version {} is already loaded; give the new one its own version",
                    version.id
                ),
            ));
        }
        if version.effective_at < now {
            return Err(ApiError::new(ErrorCode::CatalogueEffectiveConflict,
                format!(
                    "version {} would take effect at {}, which is already past: a version cannot change terms already served",
                    version.id,
                    vietnam_time(version.effective_at)
                ),
            ));
        }
        if let Some(other) = known.iter().find(|v| v.effective_at == version.effective_at) {
            return Err(ApiError::new(
                ErrorCode::CatalogueEffectiveConflict,
                format!(
                    "version {} already takes effect at {}",
                    other.id,
                    vietnam_time(version.effective_at)
                ),
            ));
        }
        let stored = StoredVersion {
            origin: origin.to_string(),
            loaded_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            source: text.to_string(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(ApiError::internal)?;
        self.tree
            .insert(version.id.as_bytes(), bytes)
            .map_err(store_err)?;
        crate::store::durable_flush(&self.tree).await.map_err(store_err)?;
        if let Some(current) = known.last() {
            version.copy_grants_from(current);
        }
        let version = Arc::new(version);
        let mut versions: Vec<Arc<CatalogueVersion>> = known.iter().cloned().collect();
        versions.push(Arc::clone(&version));
        versions.sort_by_key(|v| v.effective_at);
        match self.versions.write() {
            Ok(mut guard) => *guard = Arc::new(versions),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(versions),
        }
        Ok(version)
    }
}

/// What changed from one version to another, for machines: purposes added and removed; for purposes in
/// both, fields granted and withdrawn (read and write), prices changed, agencies granted and withdrawn.
pub fn diff(from: &CatalogueVersion, to: &CatalogueVersion) -> Value {
    let ids = |v: &CatalogueVersion| -> BTreeSet<String> { v.all().iter().map(|p| p.id.clone()).collect() };
    let (before, after) = (ids(from), ids(to));
    let mut fields_granted = Vec::new();
    let mut fields_withdrawn = Vec::new();
    let mut prices_changed = Vec::new();
    let mut agencies_granted = Vec::new();
    let mut agencies_withdrawn = Vec::new();
    for old in from.all() {
        let Some(new) = to.get(&old.id) else {
            continue;
        };
        for (access, was, now) in [("read", &old.read, &new.read), ("write", &old.write, &new.write)] {
            let was: BTreeSet<&str> = was.iter().map(|f| f.as_str()).collect();
            let now: BTreeSet<&str> = now.iter().map(|f| f.as_str()).collect();
            for f in now.difference(&was) {
                fields_granted.push(json!({ "purpose": old.id, "access": access, "field": f }));
            }
            for f in was.difference(&now) {
                fields_withdrawn.push(json!({ "purpose": old.id, "access": access, "field": f }));
            }
        }
        if old.price_vnd != new.price_vnd {
            prices_changed
                .push(json!({ "purpose": old.id, "from_vnd": old.price_vnd, "to_vnd": new.price_vnd }));
        }
        let was: BTreeSet<&String> = old.agencies.iter().collect();
        let now: BTreeSet<&String> = new.agencies.iter().collect();
        for a in now.difference(&was) {
            agencies_granted.push(json!({ "purpose": old.id, "agency": a }));
        }
        for a in was.difference(&now) {
            agencies_withdrawn.push(json!({ "purpose": old.id, "agency": a }));
        }
    }
    json!({
        "from": { "version": from.id, "effective_at": vietnam_time(from.effective_at) },
        "to": { "version": to.id, "effective_at": vietnam_time(to.effective_at) },
        "purposes_added": after.difference(&before).collect::<Vec<_>>(),
        "purposes_removed": before.difference(&after).collect::<Vec<_>>(),
        "fields_granted": fields_granted,
        "fields_withdrawn": fields_withdrawn,
        "prices_changed": prices_changed,
        "agencies_granted": agencies_granted,
        "agencies_withdrawn": agencies_withdrawn,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn schema() -> CitizenSchema {
        CitizenSchema::load(None).unwrap()
    }

    const V2027: &str = r#"
[release]
version = "2027"
effective = "2027-01-01"

[[purpose]]
id = "covid-qr-status"
title_vi = "Tra cứu"
title_en = "Look-up"
legal_basis = "Luật"
read = ["citizen_id", "full_name", "gender"]
price_vnd = 700
agencies = ["pccovid", "dvc"]

[[purpose]]
id = "new-purpose"
title_vi = "Mới"
title_en = "New"
legal_basis = "Luật"
read = ["citizen_id"]
price_vnd = 1
agencies = ["dvc"]
"#;

    #[test]
    fn versions_switch_at_their_instant_and_diff() {
        let s = schema();
        let base = CatalogueVersion::new(Catalogue::load(None, &s).unwrap(), "embedded");
        assert_eq!(base.id, INITIAL_VERSION);
        let next = CatalogueVersion::new(Catalogue::from_str(V2027, "2027.toml", &s).unwrap(), "2027.toml");
        assert_eq!(next.id, "2027");
        assert_eq!(vietnam_time(next.effective_at), "2027-01-01T00:00:00+07:00");
        assert_eq!(next.effective_at.to_rfc3339(), "2026-12-31T17:00:00+00:00");

        let d = diff(&base, &next);
        assert_eq!(d["purposes_added"], json!(["new-purpose"]));
        assert!(d["purposes_removed"]
            .as_array()
            .unwrap()
            .contains(&json!("vaccination-sync")));
        assert_eq!(
            d["prices_changed"],
            json!([{ "purpose": "covid-qr-status", "from_vnd": 500, "to_vnd": 700 }])
        );
        assert_eq!(
            d["fields_granted"],
            json!([{ "purpose": "covid-qr-status", "access": "read", "field": "gender" }])
        );
        assert_eq!(
            d["fields_withdrawn"],
            json!([{ "purpose": "covid-qr-status", "access": "read", "field": "covid_status" }])
        );
        assert_eq!(
            d["agencies_granted"],
            json!([{ "purpose": "covid-qr-status", "agency": "dvc" }])
        );
        assert_eq!(d["agencies_withdrawn"], json!([]));

        let db = sled::Config::new().temporary(true).open().unwrap();
        let catalogues = Catalogues::open(&db, base, &s).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        rt.block_on(catalogues.load(V2027, "2027.toml", &s, &|_| true, |_| Ok(()), now))
            .unwrap();
        let boundary = next.effective_at;
        assert_eq!(
            catalogues.at(boundary - chrono::Duration::milliseconds(1)).id,
            INITIAL_VERSION
        );
        assert_eq!(catalogues.at(boundary).id, "2027");
        assert_eq!(catalogues.at(DateTime::<Utc>::MIN_UTC).id, INITIAL_VERSION);
        let again = rt.block_on(catalogues.load(V2027, "2027.toml", &s, &|_| true, |_| Ok(()), now));
        assert_eq!(again.unwrap_err().code, "catalogue_version_exists");
        let unknown_agency = rt.block_on(catalogues.load(
            &V2027.replace("2027", "2028"),
            "2028.toml",
            &s,
            &|a| a != "dvc",
            |_| Ok(()),
            now,
        ));
        let e = unknown_agency.unwrap_err();
        assert_eq!(
            (e.code, e.message.starts_with("2028.toml:13: ")),
            (ErrorCode::InvalidCatalogue, true),
            "{}",
            e.message
        );
        assert!(e.message.contains("dvc"), "{}", e.message);
    }
}
