//! Stage: registry. Which agencies exist, the certificates bound to them, whether they are active, how
//! they are billed and their quota plan. The source of truth is a sled tree; every request reads an
//! in-memory snapshot (one `Arc` clone, no lock held across I/O) that each admin change rebuilds, so a
//! change takes effect on the very next request and survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// Whether an agency may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyStatus {
    /// Served.
    Active,
    /// Refused with 403 `agency_suspended`.
    Suspended,
}

/// How an agency's served calls are billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BillingClass {
    /// Charged per call at the purpose's price.
    #[default]
    Billed,
    /// Funded by the state budget: counted, not charged.
    StateBudget,
}

/// The seam the pipeline looks agencies up through: the sled-backed [`Registry`] with its in-memory
/// snapshot today; an upstream directory (or PostgreSQL, shared by several brokers) can implement it
/// beside it without touching the pipeline. Changes (register, bind, plans) stay on [`Registry`].
pub trait AgencyDirectory: Send + Sync {
    /// The agency a certificate fingerprint is bound to.
    fn by_fingerprint(&self, fingerprint: &str) -> Option<Agency>;
    /// The agency with this code.
    fn get(&self, code: &str) -> Option<Agency>;
}

impl AgencyDirectory for Registry {
    fn by_fingerprint(&self, fingerprint: &str) -> Option<Agency> {
        Registry::by_fingerprint(self, fingerprint)
    }
    fn get(&self, code: &str) -> Option<Agency> {
        Registry::get(self, code)
    }
}

/// Where a cluster's brokers share the registry (PostgreSQL): each admin change is written there first,
/// then locally; every broker follows the shared copy ([`Registry::replace_all`]). Unset: this broker's
/// sled tree is the registry.
pub trait SharedRegistry: Send + Sync {
    /// Write `agency` where every broker reads it; `new` = a registration (409 `agency_exists` if another
    /// broker registered the code first).
    fn publish<'a>(&'a self, agency: &'a Agency, new: bool) -> crate::store::StoreFuture<'a, ()>;
}

/// One registered agency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agency {
    /// Short stable code, e.g. `moh`.
    pub code: String,
    /// Display name, e.g. `Bộ Y tế`.
    pub name: String,
    /// Active or suspended.
    pub status: AgencyStatus,
    /// SHA-256 fingerprints (lower-case hex) of the client certificates bound to it.
    pub fingerprints: Vec<String>,
    /// Billing class.
    #[serde(default)]
    pub billing_class: BillingClass,
    /// Quota plan, typed once when it is set or loaded (set by the admin API). `None` (`null`) = unlimited.
    #[serde(default)]
    pub plan: Option<crate::quota::Plan>,
    /// Purposes an operator granted at run time, beyond those the catalogue lists it for.
    #[serde(default)]
    pub granted_purposes: Vec<String>,
    /// The agency's X-Road member or subsystem: the only X-Road client its certificates may name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xroad: Option<crate::xroad_id::ClientId>,
    /// When it was registered, RFC 3339.
    pub created_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
}

/// What the admin API accepts to register an agency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgency {
    /// Short stable code: lower-case letters, digits and `-`, 2..=32.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Billing class (default `billed`).
    #[serde(default)]
    pub billing_class: BillingClass,
    /// Certificates to bind right away.
    #[serde(default)]
    pub fingerprints: Vec<String>,
}

/// A dated change of an agency's billing class; the bill applies the class in force at each call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassChange {
    /// When the change took effect, RFC 3339 UTC.
    pub at: String,
    /// The class before.
    pub from: BillingClass,
    /// The class from `at` on.
    pub to: BillingClass,
}

/// An agency's billing classes over time.
#[derive(Debug, Clone)]
pub struct ClassHistory {
    /// `(at, from, to)`, oldest first.
    changes: Vec<(chrono::DateTime<chrono::Utc>, BillingClass, BillingClass)>,
    current: BillingClass,
}

impl ClassHistory {
    /// The history made of `changes` (oldest first) and the class now.
    pub fn from_changes(changes: Vec<ClassChange>, current: BillingClass) -> RegistryResult<Self> {
        let changes = changes
            .into_iter()
            .map(|c| {
                let at = chrono::DateTime::parse_from_rfc3339(&c.at).map_err(store_err)?;
                Ok((at.with_timezone(&chrono::Utc), c.from, c.to))
            })
            .collect::<RegistryResult<Vec<_>>>()?;
        Ok(Self { changes, current })
    }

    /// The class at `t`: after the last change at or before `t`, else before the first change after it,
    /// else the class now.
    pub fn at(&self, t: chrono::DateTime<chrono::Utc>) -> BillingClass {
        let after = self.changes.partition_point(|(at, _, _)| *at <= t);
        match (
            after.checked_sub(1).map(|i| &self.changes[i]),
            self.changes.get(after),
        ) {
            (Some((_, _, to)), _) => *to,
            (None, Some((_, from, _))) => *from,
            (None, None) => self.current,
        }
    }
}

#[derive(Default)]
struct Snapshot {
    by_code: BTreeMap<String, Agency>,
    by_fingerprint: HashMap<String, String>,
}

impl Snapshot {
    fn build(agencies: impl Iterator<Item = Agency>) -> Self {
        let mut snap = Snapshot::default();
        for agency in agencies {
            for fp in &agency.fingerprints {
                snap.by_fingerprint.insert(fp.clone(), agency.code.clone());
            }
            snap.by_code.insert(agency.code.clone(), agency);
        }
        snap
    }
}

/// A registry failure that is the operator's fault (bad input) or the store's.
pub type RegistryResult<T> = Result<T, ApiError>;

/// The agency registry.
pub struct Registry {
    tree: sled::Tree,
    /// Billing-class changes, keyed `code \0 millis (20 digits)`: append-only, so a bill can be recomputed.
    class_changes: sled::Tree,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises admin changes so read-modify-write of the tree and the snapshot rebuild stay in step.
    writer: tokio::sync::Mutex<()>,
    /// The cluster's shared registry, if any.
    shared: std::sync::OnceLock<Arc<dyn SharedRegistry>>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn store_err(e: impl std::fmt::Display) -> ApiError {
    crate::store::unavailable("registry", e)
}

/// Check a fingerprint's form: 64 lower-case hex digits (upper case and `:` separators are accepted
/// and normalised).
pub fn normalize_fingerprint(fp: &str) -> RegistryResult<String> {
    let fp = fp.trim().replace(':', "").to_ascii_lowercase();
    if fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(fp)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidFingerprint,
            "a fingerprint is 64 hex digits (SHA-256 of the DER certificate)",
        ))
    }
}

fn check_code(code: &str) -> RegistryResult<()> {
    let ok = (2..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !code.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidAgencyCode,
            "an agency code is 2-32 of a-z, 0-9 and '-'",
        ))
    }
}

impl Registry {
    /// Open the registry in `db` (tree `agencies`) and load its snapshot.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let tree = db.open_tree("agencies")?;
        let registry = Self {
            tree,
            class_changes: db.open_tree("billing_class_changes")?,
            snapshot: RwLock::default(),
            writer: tokio::sync::Mutex::new(()),
            shared: std::sync::OnceLock::new(),
        };
        registry
            .rebuild()
            .map_err(|e| sled::Error::Unsupported(e.message))?;
        Ok(registry)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn rebuild(&self) -> RegistryResult<()> {
        let mut agencies = Vec::new();
        for item in self.tree.iter() {
            let (_, value) = item.map_err(store_err)?;
            agencies.push(serde_json::from_slice::<Agency>(&value).map_err(store_err)?);
        }
        let snap = Arc::new(Snapshot::build(agencies.into_iter()));
        match self.snapshot.write() {
            Ok(mut guard) => *guard = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
        Ok(())
    }

    /// The agency bound to a certificate fingerprint, whatever its status.
    pub fn by_fingerprint(&self, fingerprint: &str) -> Option<Agency> {
        let snap = self.snapshot();
        let code = snap.by_fingerprint.get(fingerprint)?;
        snap.by_code.get(code).cloned()
    }

    /// The agency with this code.
    pub fn get(&self, code: &str) -> Option<Agency> {
        self.snapshot().by_code.get(code).cloned()
    }

    /// Every agency, by code.
    pub fn list(&self) -> Vec<Agency> {
        self.snapshot().by_code.values().cloned().collect()
    }

    /// Write admin changes to `shared` first from now on (set once, at start-up).
    pub fn share_through(&self, shared: Arc<dyn SharedRegistry>) {
        let _ = self.shared.set(shared);
    }

    /// Make the local copy exactly `agencies` (what the shared registry holds), then rebuild the snapshot.
    pub async fn replace_all(&self, agencies: Vec<Agency>) -> RegistryResult<()> {
        let _guard = self.writer.lock().await;
        let mut batch = sled::Batch::default();
        for item in self.tree.iter() {
            let (code, _) = item.map_err(store_err)?;
            if !agencies.iter().any(|a| a.code.as_bytes() == code.as_ref()) {
                batch.remove(code);
            }
        }
        for agency in &agencies {
            batch.insert(
                agency.code.as_bytes(),
                serde_json::to_vec(agency).map_err(store_err)?,
            );
        }
        self.tree.apply_batch(batch).map_err(store_err)?;
        crate::store::durable_flush(&self.tree).await.map_err(store_err)?;
        self.rebuild()
    }

    async fn persist(&self, agency: &Agency, new: bool) -> RegistryResult<()> {
        if let Some(shared) = self.shared.get() {
            shared.publish(agency, new).await?;
        }
        let bytes = serde_json::to_vec(agency).map_err(store_err)?;
        self.tree
            .insert(agency.code.as_bytes(), bytes)
            .map_err(store_err)?;
        crate::store::durable_flush(&self.tree).await.map_err(store_err)?;
        self.rebuild()
    }

    /// Register a new agency: 409 `agency_exists` if the code is taken, 409 `fingerprint_bound` if a
    /// fingerprint already belongs to another agency.
    pub async fn register(&self, new: NewAgency) -> RegistryResult<Agency> {
        check_code(&new.code)?;
        if new.name.trim().is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidAgencyName,
                "the agency name must not be empty",
            ));
        }
        let fingerprints = new
            .fingerprints
            .iter()
            .map(|f| normalize_fingerprint(f))
            .collect::<Result<Vec<_>, _>>()?;
        let _guard = self.writer.lock().await;
        if self.get(&new.code).is_some() {
            return Err(ApiError::new(
                ErrorCode::AgencyExists,
                format!("agency {} is already registered", new.code),
            ));
        }
        for fp in &fingerprints {
            self.check_unbound(fp, &new.code)?;
        }
        let at = now();
        let agency = Agency {
            code: new.code,
            name: new.name.trim().to_string(),
            status: AgencyStatus::Active,
            fingerprints,
            billing_class: new.billing_class,
            plan: None,
            granted_purposes: Vec::new(),
            xroad: None,
            created_at: at.clone(),
            updated_at: at,
        };
        self.persist(&agency, true).await?;
        Ok(agency)
    }

    fn check_unbound(&self, fingerprint: &str, code: &str) -> RegistryResult<()> {
        match self.snapshot().by_fingerprint.get(fingerprint) {
            Some(owner) if owner != code => Err(ApiError::new(
                ErrorCode::FingerprintBound,
                format!("that certificate is already bound to agency {owner}"),
            )),
            _ => Ok(()),
        }
    }

    /// Apply `change` to one agency and persist it; 404 `unknown_agency` if there is none.
    pub async fn update(
        &self,
        code: &str,
        change: impl FnOnce(&mut Agency) -> RegistryResult<()>,
    ) -> RegistryResult<Agency> {
        let _guard = self.writer.lock().await;
        let mut agency = self
            .get(code)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownAgency, format!("no agency {code}")))?;
        change(&mut agency)?;
        agency.updated_at = now();
        self.persist(&agency, false).await?;
        Ok(agency)
    }

    /// Bind a certificate fingerprint to an agency.
    pub async fn bind(&self, code: &str, fingerprint: &str) -> RegistryResult<Agency> {
        let fp = normalize_fingerprint(fingerprint)?;
        self.check_unbound(&fp, code)?;
        self.update(code, |a| {
            if !a.fingerprints.contains(&fp) {
                a.fingerprints.push(fp);
            }
            Ok(())
        })
        .await
    }

    /// Unbind a certificate fingerprint; 404 `unknown_fingerprint` if it was not bound.
    pub async fn unbind(&self, code: &str, fingerprint: &str) -> RegistryResult<Agency> {
        let fp = normalize_fingerprint(fingerprint)?;
        self.update(code, |a| {
            let before = a.fingerprints.len();
            a.fingerprints.retain(|f| f != &fp);
            if a.fingerprints.len() == before {
                return Err(ApiError::new(
                    ErrorCode::UnknownFingerprint,
                    "that certificate is not bound to this agency",
                ));
            }
            Ok(())
        })
        .await
    }

    /// Change an agency's billing class from `at` on, keeping the change (dated) for the bills.
    pub async fn set_billing_class(
        &self,
        code: &str,
        class: BillingClass,
        at: chrono::DateTime<chrono::Utc>,
    ) -> RegistryResult<Agency> {
        let mut from = None;
        let agency = self
            .update(code, |a| {
                from = Some(a.billing_class);
                a.billing_class = class;
                Ok(())
            })
            .await?;
        if let Some(from) = from.filter(|from| *from != class) {
            let change = ClassChange {
                at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                from,
                to: class,
            };
            let key = format!("{code}\u{0}{:020}", at.timestamp_millis().max(0));
            let bytes = serde_json::to_vec(&change).map_err(store_err)?;
            self.class_changes
                .insert(key.as_bytes(), bytes)
                .map_err(store_err)?;
            crate::store::durable_flush(&self.class_changes)
                .await
                .map_err(store_err)?;
        }
        Ok(agency)
    }

    /// Every billing-class change of an agency, oldest first.
    pub fn class_changes(&self, code: &str) -> RegistryResult<Vec<ClassChange>> {
        self.class_changes
            .scan_prefix(format!("{code}\u{0}").as_bytes())
            .map(|item| {
                let (_, value) = item.map_err(store_err)?;
                serde_json::from_slice(&value).map_err(store_err)
            })
            .collect()
    }

    /// The agency's billing classes over time (an unknown agency is billed).
    pub fn class_history(&self, code: &str) -> RegistryResult<ClassHistory> {
        let current = self.get(code).map(|a| a.billing_class).unwrap_or_default();
        ClassHistory::from_changes(self.class_changes(code)?, current)
    }

    /// Set (or with `None` clear) the agency's X-Road identity: 409 `xroad_id_bound` if another agency
    /// holds it.
    pub async fn set_xroad(
        &self,
        code: &str,
        id: Option<crate::xroad_id::ClientId>,
    ) -> RegistryResult<Agency> {
        let id = id.map(crate::xroad_id::ClientId::validated).transpose()?;
        if let Some(id) = &id {
            if let Some(owner) = self
                .list()
                .into_iter()
                .find(|a| a.code != code && a.xroad.as_ref() == Some(id))
            {
                return Err(ApiError::new(
                    ErrorCode::XroadIdBound,
                    format!("X-Road client {id} is already bound to agency {}", owner.code),
                ));
            }
        }
        self.update(code, |a| {
            a.xroad = id;
            Ok(())
        })
        .await
    }

    /// Suspend or resume an agency.
    pub async fn set_status(&self, code: &str, status: AgencyStatus) -> RegistryResult<Agency> {
        self.update(code, |a| {
            a.status = status;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default()
    }

    #[test]
    fn the_class_at_an_instant_follows_the_dated_changes() {
        use BillingClass::{Billed, StateBudget};
        let history = ClassHistory {
            changes: vec![
                (at("2030-05-10T00:00:00+07:00"), Billed, StateBudget),
                (at("2030-06-01T00:00:00+07:00"), StateBudget, Billed),
            ],
            current: Billed,
        };
        assert_eq!(history.at(at("2030-05-09T23:59:59.999+07:00")), Billed);
        assert_eq!(history.at(at("2030-05-10T00:00:00+07:00")), StateBudget);
        assert_eq!(history.at(at("2030-05-31T12:00:00+07:00")), StateBudget);
        assert_eq!(history.at(at("2030-06-01T00:00:00+07:00")), Billed);
        let unchanged = ClassHistory {
            changes: Vec::new(),
            current: StateBudget,
        };
        assert_eq!(unchanged.at(at("1999-01-01T00:00:00Z")), StateBudget);
    }
}
