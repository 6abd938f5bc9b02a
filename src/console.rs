//! Stage: operations. The operator console, a server-rendered page on the admin listener
//! (`GET /admin/console`): agencies with suspend/resume, quota use per agency and purpose, the monthly
//! billing table, the latest audit entries with filters, and the audit chain's verification status.
//!
//! It needs no JavaScript: actions are plain form POSTs answered with a redirect, and they go through the
//! same registry calls as the admin API, so they are persisted and audited alike. Only admin certificates
//! reach it (checked by [`crate::admin`]); cross-site form posts are refused by their `Origin`.
//! Citizen IDs are masked on the page.

use hyper::header::{HeaderName, HeaderValue, LOCATION};
use hyper::{Method, StatusCode};

use crate::audit::AuditFilter;
use crate::broker::Broker;
use crate::error::ApiError;
use crate::registry::AgencyStatus;
use crate::server::{mask_citizen_ids, Exchange, ReadRequest, Reply};

const PAGE: &str = include_str!("console/page.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// Audit entries shown on the page.
pub const ENTRIES_SHOWN: usize = 50;

const HTML: &str = "text/html; charset=utf-8";

/// The operation of the page's static files; like health checks they touch no data and are not
/// recorded in the audit trail (the page itself is).
pub const ASSET_OPERATION: &str = "admin:console_asset";

/// Answer `/admin/console…` (the caller has already checked the admin certificate).
pub async fn route(broker: &Broker, exchange: &mut Exchange, req: &ReadRequest) -> Result<Reply, ApiError> {
    let path = req.path().trim_end_matches('/');
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&req.parts.method, segments.as_slice()) {
        (&Method::GET, ["admin", "console"]) => {
            exchange.operation = "admin:console".into();
            let html = render(broker, req).await?;
            Ok(page_reply(StatusCode::OK, HTML, html.into()))
        }
        (&Method::GET, ["admin", "console", "console.css"]) => {
            exchange.operation = ASSET_OPERATION.into();
            Ok(page_reply(StatusCode::OK, "text/css; charset=utf-8", CSS.into()))
        }
        (&Method::GET, ["admin", "console", "console.js"]) => {
            exchange.operation = ASSET_OPERATION.into();
            Ok(page_reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                JS.into(),
            ))
        }
        (&Method::POST, ["admin", "console", "agencies", code, action @ ("suspend" | "resume")]) => {
            exchange.operation = format!("admin:{action}");
            same_origin(req)?;
            let status = if *action == "suspend" {
                AgencyStatus::Suspended
            } else {
                AgencyStatus::Active
            };
            let agency = broker.registry.set_status(code, status).await?;
            let notice = format!("{}: {}", agency.code, status_text(agency.status));
            let location = format!("/admin/console?notice={}", query_escape(&notice));
            let mut reply = page_reply(
                StatusCode::SEE_OTHER,
                HTML,
                format!("<a href=\"{}\">back to the console</a>", escape(&location)).into(),
            );
            if let Ok(v) = HeaderValue::from_str(&location) {
                reply.headers.push((LOCATION, v));
            }
            Ok(reply)
        }
        (_, ["admin", "console", ..]) => Err(ApiError::no_route(&req.parts.method, req.path())),
        _ => Err(ApiError::no_route(&req.parts.method, req.path())),
    }
}

fn page_reply(status: StatusCode, content_type: &'static str, body: bytes::Bytes) -> Reply {
    Reply {
        status,
        content_type,
        body,
        headers: vec![
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; \
                     frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                // `no-referrer` would make browsers send `Origin: null` on the console's own posts.
                HeaderValue::from_static("same-origin"),
            ),
        ],
        error_code: None,
    }
}

/// A browser posting from another site sends its own `Origin` (or `Sec-Fetch-Site: cross-site`); the
/// admin certificate would go along with it, so such posts are refused. Non-browser clients send
/// neither header and are authenticated by their certificate alone.
fn same_origin(req: &ReadRequest) -> Result<(), ApiError> {
    let headers = &req.parts.headers;
    let refuse = || ApiError::forbidden("cross_origin", "form posts must come from the console itself");
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return Err(refuse());
        }
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        let host = req
            .parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                headers
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .ok_or_else(refuse)?;
        if origin.to_str().ok() != Some(&format!("https://{host}")) {
            return Err(refuse());
        }
    }
    Ok(())
}

fn status_text(status: AgencyStatus) -> &'static str {
    match status {
        AgencyStatus::Active => "active",
        AgencyStatus::Suspended => "suspended",
    }
}

/// HTML-escape text for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn query_escape(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The filters of the audit table, from the query (blank = any).
#[derive(Debug, Default)]
struct Filters {
    agency: String,
    purpose: String,
    status: String,
    citizen_id: String,
}

impl Filters {
    fn from(req: &ReadRequest) -> Self {
        let get = |name: &str| req.query(name).map(|v| v.trim().to_string()).unwrap_or_default();
        Self {
            agency: get("agency"),
            purpose: get("purpose"),
            status: get("status"),
            citizen_id: get("citizen_id"),
        }
    }

    fn to_audit(&self) -> Result<AuditFilter, ApiError> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let status = match self.status.as_str() {
            "" => None,
            s => Some(
                s.parse::<u16>()
                    .map_err(|_| ApiError::bad_request("invalid_query", "status: not a number"))?,
            ),
        };
        Ok(AuditFilter {
            agency: some(&self.agency),
            purpose: some(&self.purpose),
            status,
            citizen_id: some(&self.citizen_id),
            from: None,
            to: None,
        })
    }
}

async fn render(broker: &Broker, req: &ReadRequest) -> Result<String, ApiError> {
    let filters = Filters::from(req);
    let audit_filter = filters.to_audit()?;
    let entries = broker.audit.search(&audit_filter, None, ENTRIES_SHOWN)?;
    let (chain_class, chain) = chain_status(broker).await;
    let notice = req
        .query("notice")
        .map(|n| format!("<p class=\"notice\" id=\"notice\">{}</p>", escape(&n)))
        .unwrap_or_default();

    let agencies = broker.registry.list();
    let mut agency_rows = String::new();
    for a in &agencies {
        let status = status_text(a.status);
        let (action, label) = match a.status {
            AgencyStatus::Active => ("suspend", "Suspend"),
            AgencyStatus::Suspended => ("resume", "Resume"),
        };
        agency_rows.push_str(&format!(
            "<tr id=\"agency-{code}\" data-status=\"{status}\"><td><code>{code}</code></td><td>{name}</td>\
             <td>{billing}</td><td class=\"num\">{certs}</td><td class=\"status-{status}\">{status}</td>\
             <td><form class=\"inline\" method=\"post\" action=\"/admin/console/agencies/{code}/{action}\">\
             <button type=\"submit\" class=\"{action}\">{label}</button></form></td></tr>",
            code = escape(&a.code),
            name = escape(&a.name),
            billing = escape(billing_text(a.billing_class)),
            certs = a.fingerprints.len(),
        ));
    }
    if agency_rows.is_empty() {
        agency_rows = "<tr><td colspan=\"6\" class=\"empty\">no agencies registered</td></tr>".into();
    }

    let mut agency_options = String::from("<option value=\"\">any</option>");
    for a in &agencies {
        agency_options.push_str(&option(&a.code, &filters.agency));
    }
    agency_options.push_str(&option("admin", &filters.agency));
    let mut purpose_options = String::from("<option value=\"\">any</option>");
    for p in broker.catalogue.all() {
        purpose_options.push_str(&option(&p.id, &filters.purpose));
    }

    let mut entry_rows = String::new();
    for e in &entries {
        let r = &e.record;
        let class = if r.status >= 400 { " class=\"error\"" } else { "" };
        let status = match &r.error_code {
            Some(code) => format!("{} <code>{}</code>", r.status, escape(code)),
            None => r.status.to_string(),
        };
        entry_rows.push_str(&format!(
            "<tr{class}><td class=\"num\">{seq}</td><td>{time}</td><td>{agency}</td><td>{purpose}</td>\
             <td>{channel}</td><td>{operation}</td><td>{citizen}</td><td>{fields}</td><td>{status}</td>\
             <td><code>{request_id}</code></td></tr>",
            seq = e.seq,
            time = escape(&e.time),
            agency = escape(r.agency.as_deref().unwrap_or("-")),
            purpose = escape(r.purpose.as_deref().unwrap_or("-")),
            channel = escape(&r.channel),
            operation = escape(&mask_citizen_ids(&r.operation)),
            citizen = escape(&mask_citizen_ids(r.citizen_id.as_deref().unwrap_or("-"))),
            fields = escape(&r.fields.join(", ")),
            request_id = escape(&r.request_id),
        ));
    }
    if entry_rows.is_empty() {
        entry_rows = "<tr><td colspan=\"10\" class=\"empty\">no matching entries</td></tr>".into();
    }

    let usage = usage(broker);
    Ok(PAGE
        .replace("{{chain_class}}", chain_class)
        .replace("{{chain}}", &chain)
        .replace("{{notice}}", &notice)
        .replace("{{agencies}}", &agency_rows)
        .replace("{{quota_period}}", &escape(&usage.quota_period))
        .replace("{{quota}}", &usage.quota_html)
        .replace("{{billing_period}}", &escape(&usage.billing_period))
        .replace("{{billing}}", &usage.billing_html)
        .replace("{{agency_options}}", &agency_options)
        .replace("{{purpose_options}}", &purpose_options)
        .replace("{{status}}", &escape(&filters.status))
        .replace("{{citizen_id}}", &escape(&filters.citizen_id))
        .replace("{{entries}}", &entry_rows))
}

fn option(value: &str, selected: &str) -> String {
    let sel = if value == selected { " selected" } else { "" };
    format!("<option value=\"{v}\"{sel}>{v}</option>", v = escape(value))
}

fn billing_text(class: crate::registry::BillingClass) -> &'static str {
    match class {
        crate::registry::BillingClass::Billed => "billed",
        crate::registry::BillingClass::StateBudget => "state budget",
    }
}

/// Walk the chain (off the async threads: it reads every segment).
async fn chain_status(broker: &Broker) -> (&'static str, String) {
    let dir = broker.config.storage.data_dir.join("audit");
    let verified = tokio::task::spawn_blocking(move || crate::audit::verify_dir(&dir)).await;
    match verified {
        Ok(Ok(r)) => (
            "ok",
            format!(
                "audit chain verified: {} entries, {} signed checkpoints, head <code title=\"{head}\">{short}…</code>",
                r.count,
                r.checkpoints,
                head = escape(&r.head_hash),
                short = escape(r.head_hash.get(..12).unwrap_or(&r.head_hash)),
            ),
        ),
        Ok(Err(f)) => (
            "bad",
            format!(
                "audit chain BROKEN at entry {}: {}",
                f.seq,
                escape(&f.reason)
            ),
        ),
        Err(e) => ("bad", format!("audit chain not verified: {}", escape(&e.to_string()))),
    }
}

/// Quota and billing sections, rendered.
struct Usage {
    quota_period: String,
    quota_html: String,
    billing_period: String,
    billing_html: String,
}

/// Most audit entries one page view reads to count the month's calls.
pub const USAGE_SCAN_LIMIT: usize = 50_000;

/// Served calls by (agency, purpose).
type CallCounts = std::collections::BTreeMap<(String, String), u64>;

/// Served calls per (agency, purpose) in the current calendar month (Vietnam time), from the audit
/// trail — the record every bill must agree with. `true` when the scan stopped at the limit.
fn month_calls(
    broker: &Broker,
    month_start: chrono::DateTime<chrono::Utc>,
) -> Result<(CallCounts, bool), ApiError> {
    let filter = AuditFilter {
        from: Some(month_start),
        ..AuditFilter::default()
    };
    let mut calls = std::collections::BTreeMap::new();
    let mut before = None;
    let mut scanned = 0usize;
    loop {
        let page = broker.audit.search(&filter, before, crate::audit_api::MAX_PAGE)?;
        scanned += page.len();
        for e in &page {
            let r = &e.record;
            if !(200..300).contains(&r.status) {
                continue;
            }
            if let (Some(agency), Some(purpose)) = (&r.agency, &r.purpose) {
                *calls.entry((agency.clone(), purpose.clone())).or_insert(0) += 1;
            }
        }
        if page.len() < crate::audit_api::MAX_PAGE {
            return Ok((calls, false));
        }
        if scanned >= USAGE_SCAN_LIMIT {
            return Ok((calls, true));
        }
        before = page.last().map(|e| e.seq);
    }
}

/// The first instant of the current month in Vietnam (UTC+7), where billing periods are counted.
fn month_start_vn(now: chrono::DateTime<chrono::Utc>) -> (chrono::DateTime<chrono::Utc>, String) {
    use chrono::{Datelike, TimeZone};
    let Some(vn) = chrono::FixedOffset::east_opt(7 * 3600) else {
        return (now, now.format("%Y-%m").to_string());
    };
    let local = now.with_timezone(&vn);
    let start = vn
        .with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .single()
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(now);
    (start, format!("{:04}-{:02}", local.year(), local.month()))
}

fn usage(broker: &Broker) -> Usage {
    let (start, month) = month_start_vn(chrono::Utc::now());
    let (calls, capped) = match month_calls(broker, start) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("<p class=\"empty\">usage unavailable: {}</p>", escape(&e.message));
            return Usage {
                quota_period: month.clone(),
                quota_html: msg.clone(),
                billing_period: month,
                billing_html: msg,
            };
        }
    };
    let note = if capped {
        format!("<p class=\"empty\">counted from the latest {USAGE_SCAN_LIMIT} audit entries only</p>")
    } else {
        String::new()
    };
    if calls.is_empty() {
        let none = "<p class=\"empty\">no served calls this month</p>".to_string();
        return Usage {
            quota_period: month.clone(),
            quota_html: none.clone(),
            billing_period: month,
            billing_html: none,
        };
    }

    // Quota use: no quota stage in this build, so bars compare each pair with the busiest one.
    let busiest = calls.values().copied().max().unwrap_or(1).max(1);
    let mut quota = String::from(
        "<table><thead><tr><th>agency</th><th>purpose</th><th>calls this month</th><th></th></tr></thead><tbody>",
    );
    for ((agency, purpose), n) in &calls {
        quota.push_str(&format!(
            "<tr class=\"quota-row\" data-agency=\"{a}\" data-purpose=\"{p}\"><td><code>{a}</code></td>\
             <td>{p}</td><td class=\"num\">{n}</td><td><meter min=\"0\" max=\"{busiest}\" value=\"{n}\" \
             title=\"{n} of {busiest}\">{n}</meter></td></tr>",
            a = escape(agency),
            p = escape(purpose),
        ));
    }
    quota.push_str("</tbody></table>");
    quota.push_str("<p class=\"empty\">no quota plans in this build: bars are relative to the busiest agency and purpose</p>");
    quota.push_str(&note);

    // Billing: served calls × the purpose's price; state-budget agencies are counted, not charged.
    let mut billing = String::from(
        "<table><thead><tr><th>agency</th><th>billing class</th><th>purpose</th><th>served calls</th>\
         <th>price (VND)</th><th>amount (VND)</th></tr></thead><tbody>",
    );
    let mut total = 0u64;
    for ((agency, purpose), n) in &calls {
        let class = broker.registry.get(agency).map(|a| a.billing_class);
        let price = broker.catalogue.get(purpose).map(|p| p.price_vnd).unwrap_or(0);
        let amount = match class {
            Some(crate::registry::BillingClass::Billed) => price.saturating_mul(*n),
            _ => 0,
        };
        total = total.saturating_add(amount);
        billing.push_str(&format!(
            "<tr class=\"billing-row\"><td><code>{a}</code></td><td>{c}</td><td>{p}</td><td class=\"num\">{n}</td>\
             <td class=\"num\">{price}</td><td class=\"num\">{amount}</td></tr>",
            a = escape(agency),
            c = escape(class.map(billing_text).unwrap_or("unknown")),
            p = escape(purpose),
        ));
    }
    billing.push_str(&format!(
        "</tbody><tfoot><tr><th colspan=\"5\">total</th><th class=\"num\" id=\"billing-total\">{total}</th></tr></tfoot></table>"
    ));
    billing.push_str(&note);
    Usage {
        quota_period: format!("{month} (Vietnam time)"),
        quota_html: quota,
        billing_period: format!("{month}, from the audit trail"),
        billing_html: billing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_months_follow_vietnam_time() {
        use chrono::TimeZone;
        // 17:30 UTC on 31 October is already 1 November in Hà Nội.
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 10, 31, 17, 30, 0)
            .single()
            .unwrap_or_default();
        let (start, label) = month_start_vn(now);
        assert_eq!(label, "2026-11");
        assert_eq!(start.to_rfc3339(), "2026-10-31T17:00:00+00:00");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<b onclick="x">&'"#),
            "&lt;b onclick=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    fn post(headers: &[(&str, &str)]) -> ReadRequest {
        let mut builder = hyper::Request::builder()
            .method(Method::POST)
            .uri("https://127.0.0.1:8444/admin/console/agencies/moh/suspend");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let (parts, ()) = builder
            .body(())
            .map(|r| r.into_parts())
            .unwrap_or_else(|_| unreachable!());
        ReadRequest {
            parts,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&post(&[])).is_ok());
        assert!(same_origin(&post(&[
            ("origin", "https://127.0.0.1:8444"),
            ("sec-fetch-site", "same-origin")
        ]))
        .is_ok());
        for headers in [
            &[("origin", "https://evil.example")][..],
            &[("origin", "null")][..],
            &[("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "same-site")][..],
        ] {
            let err = same_origin(&post(headers)).err().map(|e| e.code);
            assert_eq!(err, Some("cross_origin"), "{headers:?}");
        }
    }

    #[test]
    fn page_has_every_placeholder_once() {
        for p in [
            "{{chain}}",
            "{{agencies}}",
            "{{quota}}",
            "{{billing}}",
            "{{entries}}",
            "{{agency_options}}",
            "{{purpose_options}}",
        ] {
            assert_eq!(PAGE.matches(p).count(), 1, "{p}");
        }
    }
}
