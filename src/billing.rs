//! Billing: the monthly report, priced at the terms in force at each call. The report is computed from
//! the audit trail: each served call is priced at its purpose's price in the catalogue version recorded
//! on its audit entry (the version that served it), under the agency's billing class at the entry's
//! instant (class changes are dated, see `registry::ClassHistory`). One line per (agency,
//! purpose, unit price, class), so a price or class change mid-month shows as two lines.
//!
//! `reconcile` recomputes the month from the trail and compares its served and refused calls per agency
//! and purpose with the quota counters (and, for a closed month, the frozen report with the trail).
//! `close` freezes a month that is over: the report, the audit chain head it was computed from and the
//! closing instant, signed with the trail's Ed25519 key; later catalogue versions or class changes
//! cannot alter it, and an agency can check its invoice against the trail.
//!
//! With PostgreSQL (`storage.backend = "postgres"`) every broker answers for the cluster: the trail is
//! every broker's chain, the counters are the shared ones, class changes are those made on any broker,
//! and a month is closed once for all of them (the statement then names every chain's head).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditEntry, AuditFilter, Billed, SignedStatement};
use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{ReadRequest, Reply};
use crate::quota::{month_range, MonthTotals};
use crate::registry::{BillingClass, ClassHistory};

/// Separates a closed month's signature from every other signature made with the trail's key.
pub const CLOSE_DOMAIN: &str = "lienthong-billing-close-v1";

/// One line of the monthly report: the calls of one agency for one purpose at one price and class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Agency code.
    pub agency: String,
    /// Purpose id.
    pub purpose: String,
    /// Calls served.
    pub served: u64,
    /// Calls refused for quota.
    pub refused_quota: u64,
    /// Price per served call, VND, in the catalogue version that served the calls.
    pub unit_price_vnd: u64,
    /// Amount due, VND (0 when exempt).
    pub amount_vnd: u64,
    /// Funded by the state budget at the time of the calls: counted, not charged.
    pub exempt: bool,
    /// The agency's billing class at the time of the calls.
    pub billing_class: BillingClass,
    /// The catalogue versions that served the calls (several when a new version kept the price).
    pub catalogue_versions: Vec<String>,
}

/// The report of one month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `YYYY-MM`.
    pub month: String,
    /// Lines by agency, purpose, unit price, then class.
    pub lines: Vec<Line>,
    /// Sum of `amount_vnd`.
    pub total_vnd: u64,
}

/// What a closed month's signature covers: the compact JSON of this value, as exported in
/// [`ClosedMonth::signed_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// `YYYY-MM`.
    pub month: String,
    /// When the month was closed, RFC 3339 UTC.
    pub closed_at: String,
    /// The audit chain head the report was computed from: its seq…
    pub audit_head_seq: u64,
    /// …and its hash. With PostgreSQL: the entries over every chain, and the SHA-256 of
    /// `audit_chains` as seals list them (`"{chain_id} {seq} {hash}\n"` per chain).
    pub audit_head_hash: String,
    /// With PostgreSQL: every broker's chain head when the month was closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_chains: Vec<crate::postgres::seals::SealedHead>,
    /// The frozen report.
    pub report: Report,
}

/// A closed month, as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedMonth {
    /// What was signed.
    pub statement: Statement,
    /// The exact bytes signed (after `"lienthong-billing-close-v1\n"`), so a verifier need not re-encode.
    pub signed_json: String,
    /// Ed25519 by the trail's checkpoint key.
    pub signature: SignedStatement,
}

#[derive(Default)]
struct Tally {
    served: u64,
    refused: u64,
    versions: BTreeSet<String>,
}

/// A month recomputed from the audit trail.
struct Audited {
    report: Report,
    /// Served and refused calls per (agency, purpose), to compare with the counters.
    totals: BTreeMap<(String, String), MonthTotals>,
}

/// The served and refused calls of the month on the trail, priced at their own terms.
async fn from_audit(broker: &Broker, month: &str) -> Result<Audited, ApiError> {
    let (from, to) = month_range(month)?;
    let filter = AuditFilter {
        from: Some(from),
        to: Some(to),
        ..AuditFilter::default()
    };
    let mut classes: HashMap<String, ClassHistory> = HashMap::new();
    let mut lines: BTreeMap<(String, String, u64, BillingClass), Tally> = BTreeMap::new();
    let mut totals: BTreeMap<(String, String), MonthTotals> = BTreeMap::new();
    let mut before = None;
    loop {
        // Every broker's entries with PostgreSQL.
        let page = crate::audit_api::search(broker, &filter, before, 500).await?;
        for (_, e) in &page {
            let (Some(agency), Some(purpose), Some(billed)) =
                (&e.record.agency, &e.record.purpose, e.record.billed_as())
            else {
                continue;
            };
            let (served, refused) = (billed == Billed::Served, billed == Billed::Refused);
            let (version, unit) = terms_of(broker, e, purpose);
            let at = e.parsed_time().unwrap_or(from);
            let class = match classes.get(agency) {
                Some(history) => history.at(at),
                None => {
                    let history = class_history(broker, agency).await?;
                    let class = history.at(at);
                    classes.insert(agency.clone(), history);
                    class
                }
            };
            let tally = lines
                .entry((agency.clone(), purpose.clone(), unit, class))
                .or_default();
            tally.served += u64::from(served);
            tally.refused += u64::from(refused);
            tally.versions.insert(version);
            let t = totals.entry((agency.clone(), purpose.clone())).or_default();
            t.served += u64::from(served);
            t.refused += u64::from(refused);
        }
        match page.last() {
            Some((cursor, _)) if page.len() == 500 => before = Some(*cursor),
            _ => break,
        }
    }
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|((agency, purpose, unit, class), tally)| {
            let exempt = class == BillingClass::StateBudget;
            Line {
                agency,
                purpose,
                served: tally.served,
                refused_quota: tally.refused,
                unit_price_vnd: unit,
                amount_vnd: if exempt {
                    0
                } else {
                    unit.saturating_mul(tally.served)
                },
                exempt,
                billing_class: class,
                catalogue_versions: tally.versions.into_iter().collect(),
            }
        })
        .collect();
    let total_vnd = lines.iter().map(|l| l.amount_vnd).sum();
    Ok(Audited {
        report: Report {
            month: month.to_string(),
            lines,
            total_vnd,
        },
        totals,
    })
}

/// The catalogue version that served an entry and the purpose's price in it. Entries written before
/// versions were recorded are priced by the version in force at their instant.
fn terms_of(broker: &Broker, entry: &AuditEntry, purpose: &str) -> (String, u64) {
    let version = entry
        .record
        .catalogue_version
        .as_deref()
        .and_then(|id| broker.catalogues.get(id))
        .unwrap_or_else(|| broker.catalogues.at(entry.parsed_time().unwrap_or_default()));
    let unit = version.get(purpose).map_or(0, |p| p.price_vnd);
    (version.id.clone(), unit)
}

/// An agency's billing classes over time: with PostgreSQL, as changed on any broker.
async fn class_history(broker: &Broker, agency: &str) -> Result<ClassHistory, ApiError> {
    match &broker.postgres {
        Some(backend) => {
            let current = broker
                .registry
                .get(agency)
                .map(|a| a.billing_class)
                .unwrap_or_default();
            ClassHistory::from_changes(backend.registry.class_changes(agency).await?, current)
        }
        None => broker.registry.class_history(agency),
    }
}

fn closed_tree(broker: &Broker) -> Result<sled::Tree, ApiError> {
    broker
        .db
        .open_tree("billing_closed")
        .map_err(|e| crate::store::unavailable("billing", e))
}

/// The closed month, if it was closed (with PostgreSQL: by any broker).
pub async fn closed(broker: &Broker, month: &str) -> Result<Option<ClosedMonth>, ApiError> {
    month_range(month)?;
    if let Some(backend) = &broker.postgres {
        return crate::postgres::billing::closed(&backend.postgres, month).await;
    }
    let Some(bytes) = closed_tree(broker)?
        .get(month.as_bytes())
        .map_err(|e| crate::store::unavailable("billing", e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| crate::store::unavailable("billing", e))
}

/// The monthly report: the frozen one for a closed month, else recomputed from the audit trail.
pub async fn report(broker: &Broker, month: &str) -> Result<Report, ApiError> {
    if let Some(closed) = closed(broker, month).await? {
        return Ok(closed.statement.report);
    }
    Ok(from_audit(broker, month).await?.report)
}

/// Close a month that is over: 409 `month_not_over` before its last instant has passed (Vietnam time),
/// 409 `month_closed` when it already is. Durable before it is answered.
pub async fn close(broker: &Broker, month: &str) -> Result<ClosedMonth, ApiError> {
    let (_, end) = month_range(month)?;
    let now = broker.clock.now();
    if now < end {
        return Err(ApiError::new(
            ErrorCode::MonthNotOver,
            format!(
                "{month} is not over until {}",
                crate::catalogue::vietnam_time(end)
            ),
        ));
    }
    let already_closed = || ApiError::new(ErrorCode::MonthClosed, format!("{month} is already closed"));
    if closed(broker, month).await?.is_some() {
        return Err(already_closed());
    }
    // The head first: every entry of the month is on the trail by now, so the report covers no more
    // than the chain up to this head.
    let (audit_head_seq, audit_head_hash, audit_chains) = match &broker.postgres {
        Some(backend) => {
            let heads = crate::postgres::seals::heads(&backend.postgres).await?;
            let entries = heads.iter().map(|h| u64::try_from(h.seq).unwrap_or(0)).sum();
            (entries, digest_of_heads(&heads), heads)
        }
        None => {
            let (seq, hash) = broker.audit.head();
            (seq, hash, Vec::new())
        }
    };
    let report = from_audit(broker, month).await?.report;
    let statement = Statement {
        month: month.to_string(),
        closed_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        audit_head_seq,
        audit_head_hash,
        audit_chains,
        report,
    };
    let signed_json = serde_json::to_string(&statement).map_err(ApiError::internal)?;
    let signature = broker.audit.sign_statement(CLOSE_DOMAIN, signed_json.as_bytes());
    let closed = ClosedMonth {
        statement,
        signed_json,
        signature,
    };
    if let Some(backend) = &broker.postgres {
        // Once for the whole cluster: a close on another broker in between wins, this one is refused.
        return match crate::postgres::billing::store_closed(&backend.postgres, month, &closed).await? {
            true => Ok(closed),
            false => Err(already_closed()),
        };
    }
    let bytes = serde_json::to_vec(&closed).map_err(ApiError::internal)?;
    let tree = closed_tree(broker)?;
    let swapped = tree
        .compare_and_swap(month.as_bytes(), None as Option<&[u8]>, Some(bytes))
        .map_err(|e| crate::store::unavailable("billing", e))?;
    if swapped.is_err() {
        return Err(already_closed());
    }
    crate::store::durable_flush(&tree)
        .await
        .map_err(|e| crate::store::unavailable("billing", e))?;
    Ok(closed)
}

/// SHA-256 (hex) of every chain's head, one `"{chain_id} {seq} {hash}\n"` line per chain in chain id
/// order, as a seal lists them: the cluster's head in one value.
fn digest_of_heads(heads: &[crate::postgres::seals::SealedHead]) -> String {
    let lines = crate::postgres::seals::head_lines(heads);
    hex::encode(ring::digest::digest(&ring::digest::SHA256, lines.as_bytes()))
}

/// The report as CSV (header line, one line per agency, purpose, price and class, a total line).
pub fn to_csv(report: &Report) -> String {
    let mut out =
        String::from("month,agency,purpose,served,refused_quota,unit_price_vnd,amount_vnd,exempt\n");
    for l in &report.lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            report.month,
            l.agency,
            l.purpose,
            l.served,
            l.refused_quota,
            l.unit_price_vnd,
            l.amount_vnd,
            l.exempt
        ));
    }
    out.push_str(&format!("{},TOTAL,,,,,{},\n", report.month, report.total_vnd));
    out
}

/// A closed month as CSV: the report, then `#` lines with the chain head, the closing instant and the
/// signature (which covers `signed_json` of the JSON export).
pub fn closed_to_csv(closed: &ClosedMonth) -> String {
    let s = &closed.statement;
    let mut out = to_csv(&s.report);
    out.push_str(&format!(
        "# closed_at={}\n# audit_head_seq={}\n# audit_head_hash={}\n# signature_domain={}\n# signature={}\n# public_key={}\n",
        s.closed_at,
        s.audit_head_seq,
        s.audit_head_hash,
        closed.signature.domain,
        closed.signature.signature,
        closed.signature.public_key
    ));
    out
}

/// A difference between the counters and the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// Agency code.
    pub agency: String,
    /// Purpose id.
    pub purpose: String,
    /// Served per counters / per audit trail.
    pub served: (u64, u64),
    /// Refused for quota per counters / per audit trail.
    pub refused_quota: (u64, u64),
}

/// What reconciling a month found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciliation {
    /// The month recomputed from the audit trail.
    pub from_audit: Report,
    /// Where the counters differ from the trail.
    pub differences: Vec<Difference>,
    /// For a closed month: whether the frozen report equals the one recomputed now.
    pub closed_report_matches: Option<bool>,
}

impl Reconciliation {
    /// Nothing differs.
    pub fn ok(&self) -> bool {
        self.differences.is_empty() && self.closed_report_matches != Some(false)
    }
}

/// Recompute the month from the audit trail and compare with the counters (and the frozen report).
pub async fn reconcile(broker: &Broker, month: &str) -> Result<Reconciliation, ApiError> {
    let audited = from_audit(broker, month).await?;
    let counters = match &broker.postgres {
        Some(backend) => backend.quota.month_totals(month).await?,
        None => broker.quota.month_totals(month)?,
    };
    let mut keys: Vec<&(String, String)> = counters.keys().chain(audited.totals.keys()).collect();
    keys.sort();
    keys.dedup();
    let differences = keys
        .into_iter()
        .filter_map(|k| {
            let c = counters.get(k).cloned().unwrap_or_default();
            let a = audited.totals.get(k).cloned().unwrap_or_default();
            (c != a).then(|| Difference {
                agency: k.0.clone(),
                purpose: k.1.clone(),
                served: (c.served, a.served),
                refused_quota: (c.refused, a.refused),
            })
        })
        .collect();
    let closed_report_matches = closed(broker, month)
        .await?
        .map(|c| c.statement.report == audited.report);
    Ok(Reconciliation {
        from_audit: audited.report,
        differences,
        closed_report_matches,
    })
}

fn csv_reply(text: String) -> Reply {
    let mut r = Reply::json(StatusCode::OK, &serde_json::Value::Null);
    r.body = text.into();
    r.content_type = "text/csv; charset=utf-8";
    r
}

fn bad_format(other: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidQuery,
        format!("format {other:?}: use csv or json"),
    )
}

/// `GET /admin/v1/billing/report?month=…&format=csv|json`, `GET /admin/v1/billing/reconcile?month=…`,
/// `GET /admin/v1/billing/closed?month=…&format=csv|json` and `POST /admin/v1/billing/close?month=…`.
pub async fn admin_route(broker: &Broker, req: &ReadRequest, action: &str) -> Result<Reply, ApiError> {
    let month = req
        .query("month")
        .unwrap_or_else(|| crate::quota::month_of(broker.clock.now()));
    let format = req.query("format");
    match action {
        "report" => {
            let closed = closed(broker, &month).await?;
            let report = match &closed {
                Some(c) => c.statement.report.clone(),
                None => report(broker, &month).await?,
            };
            match format.as_deref() {
                Some("csv") => Ok(csv_reply(to_csv(&report))),
                None | Some("json") => {
                    let mut body = json!(report);
                    body["closed"] = json!(closed.is_some());
                    Ok(Reply::json(StatusCode::OK, &body))
                }
                Some(other) => Err(bad_format(other)),
            }
        }
        "reconcile" => {
            let r = reconcile(broker, &month).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "month": month, "ok": r.ok(), "differences": r.differences,
                         "closed_report_matches": r.closed_report_matches, "from_audit": r.from_audit }),
            ))
        }
        "close" | "closed" => {
            if let Some(other) = format.as_deref().filter(|f| !matches!(*f, "csv" | "json")) {
                return Err(bad_format(other));
            }
            let (status, closed) = if action == "close" {
                (StatusCode::CREATED, close(broker, &month).await?)
            } else {
                let closed = closed(broker, &month).await?.ok_or_else(|| {
                    ApiError::new(ErrorCode::MonthNotClosed, format!("{month} has not been closed"))
                })?;
                (StatusCode::OK, closed)
            };
            match format.as_deref() {
                Some("csv") => {
                    let mut r = csv_reply(closed_to_csv(&closed));
                    r.status = status;
                    Ok(r)
                }
                _ => Ok(Reply::json(status, &json!(closed))),
            }
        }
        _ => Err(ApiError::no_route(&req.parts.method, req.path())),
    }
}
