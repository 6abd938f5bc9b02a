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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

    /// Suspend or resume an agency.
    pub async fn set_status(&self, code: &str, status: AgencyStatus) -> RegistryResult<Agency> {
        self.update(code, |a| {
            a.status = status;
            Ok(())
        })
        .await
    }
}
