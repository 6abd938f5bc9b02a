//! Billing: the monthly report per agency and purpose — calls served, calls refused for quota, unit price
//! (the purpose's `price_vnd`), amount, and whether the agency is funded by the state budget (counted, not
//! charged). `reconcile` recomputes served and refused calls from the audit trail and lists every
//! difference, so the totals can always be checked against the tamper-evident record.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use crate::audit::AuditFilter;
use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{ReadRequest, Reply};
use crate::quota::{month_range, MonthTotals};
use crate::registry::BillingClass;

/// One line of the monthly report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Agency code.
    pub agency: String,
    /// Purpose id.
    pub purpose: String,
    /// Calls served.
    pub served: u64,
    /// Calls refused for quota.
    pub refused_quota: u64,
    /// Price per served call, VND.
    pub unit_price_vnd: u64,
    /// Amount due, VND (0 when exempt).
    pub amount_vnd: u64,
    /// Funded by the state budget: counted, not charged.
    pub exempt: bool,
}

/// The report of one month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `YYYY-MM`.
    pub month: String,
    /// Lines by agency then purpose.
    pub lines: Vec<Line>,
    /// Sum of `amount_vnd`.
    pub total_vnd: u64,
}

/// The monthly report from the counters.
pub fn report(broker: &Broker, month: &str) -> Result<Report, ApiError> {
    broker.embedded_only("the billing report")?;
    month_range(month)?;
    let totals = broker.quota.month_totals(month)?;
    Ok(build(broker, month, &totals))
}

fn build(broker: &Broker, month: &str, totals: &BTreeMap<(String, String), MonthTotals>) -> Report {
    let lines: Vec<Line> = totals
        .iter()
        .map(|((agency, purpose), t)| {
            let exempt = broker
                .registry
                .get(agency)
                .is_some_and(|a| a.billing_class == BillingClass::StateBudget);
            let unit = broker.catalogue.get(purpose).map(|p| p.price_vnd).unwrap_or(0);
            Line {
                agency: agency.clone(),
                purpose: purpose.clone(),
                served: t.served,
                refused_quota: t.refused,
                unit_price_vnd: unit,
                amount_vnd: if exempt { 0 } else { unit.saturating_mul(t.served) },
                exempt,
            }
        })
        .collect();
    let total_vnd = lines.iter().map(|l| l.amount_vnd).sum();
    Report {
        month: month.to_string(),
        lines,
        total_vnd,
    }
}

/// The report as CSV (header line, one line per agency and purpose, a total line).
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

/// Recompute the month from the audit trail and compare with the counters.
pub async fn reconcile(broker: &Broker, month: &str) -> Result<(Report, Vec<Difference>), ApiError> {
    broker.embedded_only("billing reconcile")?;
    let (from, to) = month_range(month)?;
    let filter = AuditFilter {
        from: Some(from),
        to: Some(to),
        ..AuditFilter::default()
    };
    let mut audited: BTreeMap<(String, String), MonthTotals> = BTreeMap::new();
    let mut before = None;
    loop {
        let page = broker.audit.search(&filter, before, 500).await?;
        for e in &page {
            let (Some(agency), Some(purpose)) = (&e.record.agency, &e.record.purpose) else {
                continue;
            };
            let served = e.record.metered && (200..300).contains(&e.record.status);
            let refused = e.record.error_code.as_deref() == Some(ErrorCode::QuotaExceeded.as_str());
            if served || refused {
                let t = audited.entry((agency.clone(), purpose.clone())).or_default();
                t.served += u64::from(served);
                t.refused += u64::from(refused);
            }
        }
        match page.last() {
            Some(last) if page.len() == 500 => before = Some(last.seq),
            _ => break,
        }
    }
    let counters = broker.quota.month_totals(month)?;
    let mut keys: Vec<&(String, String)> = counters.keys().chain(audited.keys()).collect();
    keys.sort();
    keys.dedup();
    let differences = keys
        .into_iter()
        .filter_map(|k| {
            let c = counters.get(k).cloned().unwrap_or_default();
            let a = audited.get(k).cloned().unwrap_or_default();
            (c != a).then(|| Difference {
                agency: k.0.clone(),
                purpose: k.1.clone(),
                served: (c.served, a.served),
                refused_quota: (c.refused, a.refused),
            })
        })
        .collect();
    Ok((build(broker, month, &audited), differences))
}

/// `GET /admin/v1/billing/report?month=…&format=csv|json` and `GET /admin/v1/billing/reconcile?month=…`.
pub async fn admin_route(broker: &Broker, req: &ReadRequest, action: &str) -> Result<Reply, ApiError> {
    let month = req
        .query("month")
        .unwrap_or_else(|| crate::quota::month_of(chrono::Utc::now()));
    match action {
        "report" => {
            let report = report(broker, &month)?;
            match req.query("format").as_deref() {
                Some("csv") => {
                    let mut r = Reply::json(StatusCode::OK, &serde_json::Value::Null);
                    r.body = to_csv(&report).into();
                    r.content_type = "text/csv; charset=utf-8";
                    Ok(r)
                }
                None | Some("json") => Ok(Reply::json(StatusCode::OK, &json!(report))),
                Some(other) => Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("format {other:?}: use csv or json"),
                )),
            }
        }
        "reconcile" => {
            let (from_audit, differences) = reconcile(broker, &month).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &json!({ "month": month, "ok": differences.is_empty(), "differences": differences, "from_audit": from_audit }),
            ))
        }
        _ => Err(ApiError::no_route(&req.parts.method, req.path())),
    }
}
