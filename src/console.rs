//! Stage: operations. The operator console, a server-rendered page on the admin listener
//! (`GET /admin/console`): agencies with suspend/resume, quota use per agency and purpose, the monthly
//! billing table, the latest audit entries with filters, and the audit chain's verification status.
//!
//! It needs no JavaScript: actions are plain form POSTs answered with a redirect, and they go through the
//! same registry calls as the admin API, so they are persisted and audited alike. Only admin certificates
//! reach it (checked by `admin`); cross-site form posts are refused by their `Origin`.
//! Citizen IDs are masked on the page.

use hyper::header::{HeaderName, HeaderValue, LOCATION};
use hyper::{Method, StatusCode};

use crate::audit::AuditFilter;
use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{mask_citizen_ids, AdminOperation, Exchange, Operation, ReadRequest, Reply};
use crate::registry::AgencyStatus;

const PAGE: &str = include_str!("console/page.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// Audit entries shown on the page.
pub const ENTRIES_SHOWN: usize = 50;

const HTML: &str = "text/html; charset=utf-8";

/// Answer `/admin/console…` (the caller has already checked the admin certificate).
pub async fn route(broker: &Broker, exchange: &mut Exchange, req: &ReadRequest) -> Result<Reply, ApiError> {
    let path = req.path().trim_end_matches('/');
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&req.parts.method, segments.as_slice()) {
        (&Method::GET, ["admin", "console"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::Console));
            let html = render(broker, req).await?;
            Ok(page_reply(StatusCode::OK, HTML, html.into()))
        }
        (&Method::GET, ["admin", "console", "console.css"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::ConsoleAsset));
            Ok(page_reply(StatusCode::OK, "text/css; charset=utf-8", CSS.into()))
        }
        (&Method::GET, ["admin", "console", "console.js"]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::ConsoleAsset));
            Ok(page_reply(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                JS.into(),
            ))
        }
        (&Method::POST, ["admin", "console", "agencies", code, action @ ("suspend" | "resume")]) => {
            exchange.operation = Some(Operation::Admin(AdminOperation::suspend_or_resume(action)));
            refuse_cross_site(req)?;
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
        internal_cause: None,
    }
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
                    .map_err(|_| ApiError::new(ErrorCode::InvalidQuery, "status: not a number"))?,
            ),
        };
        Ok(AuditFilter {
            agency: some(&self.agency),
            purpose: some(&self.purpose),
            status,
            citizen_id: some(&self.citizen_id),
            from: None,
            to: None,
            user_id: None,
            issue: None,
        })
    }
}

async fn render(broker: &Broker, req: &ReadRequest) -> Result<String, ApiError> {
    let filters = Filters::from(req);
    let audit_filter = filters.to_audit()?;
    // Every broker's entries with PostgreSQL.
    let entries = crate::audit_api::search(broker, &audit_filter, None, ENTRIES_SHOWN).await?;
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
    for p in broker.catalogue().all() {
        purpose_options.push_str(&option(&p.id, &filters.purpose));
    }

    let mut entry_rows = String::new();
    for (_, e) in &entries {
        let r = &e.record;
        let class = if r.status >= 400 { " class=\"error\"" } else { "" };
        let status = match &r.error_code {
            Some(code) => format!("{} <code>{}</code>", r.status, escape(code)),
            None => r.status.to_string(),
        };
        entry_rows.push_str(&format!(
            "<tr{class}><td class=\"num\">{seq}</td><td class=\"time\">{time}</td><td>{agency}</td><td>{purpose}</td>\
             <td>{channel}</td><td>{operation}</td><td>{citizen}</td><td>{fields}</td><td>{status}</td>\
             <td><code class=\"rid\" title=\"{request_id}\">{request_id}</code></td></tr>",
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

    let usage = usage(broker).await;
    Ok(PAGE
        .replace("{{upstream}}", &upstream_status(broker))
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

/// In upstream provider mode, the provider's reachability and circuit (nothing for the embedded store).
fn upstream_status(broker: &Broker) -> String {
    match broker.store.health() {
        Ok(None) => String::new(),
        Ok(Some(h)) => format!(
            "  <div id=\"upstream\" class=\"chain ok\">upstream provider <code>{}</code>: reachable, circuit {}</div>\n",
            escape(h["provider"].as_str().unwrap_or("-")),
            escape(h["circuit"].as_str().unwrap_or("-")),
        ),
        Err(_) => "  <div id=\"upstream\" class=\"chain bad\">upstream provider unreachable or circuit open: \
                   citizen reads and writes answer 503 upstream_unavailable</div>\n"
            .into(),
    }
}

/// Walk the chain (off the async threads: it reads every segment); with PostgreSQL every broker's chain
/// and seal.
async fn chain_status(broker: &Broker) -> (&'static str, String) {
    if let Some(backend) = &broker.postgres {
        return cluster_chain_status(&backend.postgres).await;
    }
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

/// What `/admin/v1/audit/verify` answers on PostgreSQL, as one line.
async fn cluster_chain_status(postgres: &crate::postgres::Postgres) -> (&'static str, String) {
    match crate::postgres::seals::verify_json(postgres).await {
        Ok(v) if v["ok"] == true => (
            "ok",
            format!(
                "audit chains verified: {} entries in {} chains (every broker's), {} signed seals",
                v["count"],
                v["chains"].as_array().map_or(0, Vec::len),
                v["seals"],
            ),
        ),
        Ok(v) => (
            "bad",
            format!(
                "audit chain BROKEN: {}",
                escape(v["reason"].as_str().unwrap_or_default())
            ),
        ),
        Err(e) => (
            "bad",
            format!("audit chains not verified: {}", escape(&e.to_string())),
        ),
    }
}

/// Quota and billing sections, rendered.
struct Usage {
    quota_period: String,
    quota_html: String,
    billing_period: String,
    billing_html: String,
}

async fn usage(broker: &Broker) -> Usage {
    let month = crate::quota::month_of(broker.clock.now());
    Usage {
        quota_period: "this minute, today and this month (Vietnam time)".into(),
        quota_html: quota_table(broker).await.unwrap_or_else(unavailable),
        billing_period: month.clone(),
        billing_html: billing_table(broker, &month).await.unwrap_or_else(unavailable),
    }
}

fn unavailable(e: ApiError) -> String {
    format!("<p class=\"empty\">unavailable: {}</p>", escape(&e.message))
}

/// One cell of the quota table: a bar against the plan's limit, or the count when unlimited.
fn quota_cell(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!(
            "<td><meter min=\"0\" max=\"{max}\" high=\"{high}\" value=\"{used}\" title=\"{used} of {limit}\">\
             {used}</meter> <span class=\"num\">{used} / {limit}</span></td>",
            max = limit.max(1),
            high = (limit.max(1) * 9).div_ceil(10),
        ),
        None => format!("<td><span class=\"num\">{used}</span> <span class=\"empty\">no limit</span></td>"),
    }
}

/// Use of every agency's purposes in the current windows (every broker's with PostgreSQL), against its
/// plan.
async fn quota_table(broker: &Broker) -> Result<String, ApiError> {
    let mut rows = String::new();
    for agency in broker.registry.list() {
        let plan = agency.plan.clone().unwrap_or_default();
        for purpose in broker.catalogue().for_agency(&agency.code) {
            let used = broker.quota_usage(&agency.code, &purpose.id).await?;
            let limits = plan.for_purpose(&purpose.id);
            let count = |w: &str| used.get(w).copied().unwrap_or(0);
            rows.push_str(&format!(
                "<tr class=\"quota-row\" data-agency=\"{a}\" data-purpose=\"{p}\"><td><code>{a}</code></td>\
                 <td>{p}</td>{minute}{day}{month}</tr>",
                a = escape(&agency.code),
                p = escape(&purpose.id),
                minute = quota_cell(count("minute"), limits.per_minute),
                day = quota_cell(count("day"), limits.per_day),
                month = quota_cell(count("month"), limits.per_month),
            ));
        }
    }
    if rows.is_empty() {
        return Ok("<p class=\"empty\">no agency may use any purpose</p>".into());
    }
    Ok(format!(
        "<table><thead><tr><th>agency</th><th>purpose</th><th>this minute</th><th>today</th>\
         <th>this month</th></tr></thead><tbody>{rows}</tbody></table>"
    ))
}

/// The month's billing report (the same one `GET /admin/v1/billing/report` answers).
async fn billing_table(broker: &Broker, month: &str) -> Result<String, ApiError> {
    let report = crate::billing::report(broker, month).await?;
    if report.lines.is_empty() {
        return Ok("<p class=\"empty\">no calls this month</p>".into());
    }
    let mut rows = String::new();
    for l in &report.lines {
        rows.push_str(&format!(
            "<tr class=\"billing-row\"><td><code>{a}</code></td><td>{p}</td><td class=\"num\">{served}</td>\
             <td class=\"num\">{refused}</td><td class=\"num\">{unit}</td><td class=\"num\">{amount}</td>\
             <td>{exempt}</td></tr>",
            a = escape(&l.agency),
            p = escape(&l.purpose),
            served = l.served,
            refused = l.refused_quota,
            unit = l.unit_price_vnd,
            amount = l.amount_vnd,
            exempt = if l.exempt { "state budget" } else { "billed" },
        ));
    }
    Ok(format!(
        "<table><thead><tr><th>agency</th><th>purpose</th><th>served</th><th>refused (quota)</th>\
         <th>price (VND)</th><th>amount (VND)</th><th>class</th></tr></thead><tbody>{rows}</tbody>\
         <tfoot><tr><th colspan=\"5\">total</th><th class=\"num\" id=\"billing-total\">{total}</th><th></th></tr></tfoot></table>",
        total = report.total_vnd
    ))
}

/// A browser sending a request from another site adds its own `Origin` (or `Sec-Fetch-Site: cross-site`);
/// the operator's admin certificate, imported into that browser, would go along with it, so such
/// requests are refused. Non-browser clients send neither header and are authenticated by their
/// certificate alone.
pub(crate) fn refuse_cross_site(req: &ReadRequest) -> Result<(), ApiError> {
    let headers = &req.parts.headers;
    let refuse = || {
        ApiError::new(
            ErrorCode::CrossOrigin,
            "state-changing admin requests must not come from another site",
        )
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_cells_show_bars_only_under_a_limit() {
        let capped = quota_cell(9, Some(10));
        assert!(capped.contains("<meter") && capped.contains("9 / 10"), "{capped}");
        let open = quota_cell(3, None);
        assert!(!open.contains("<meter") && open.contains("no limit"), "{open}");
        assert!(quota_cell(0, Some(0)).contains("max=\"1\""));
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
        assert!(refuse_cross_site(&post(&[])).is_ok());
        assert!(refuse_cross_site(&post(&[
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
            let err = refuse_cross_site(&post(headers)).err().map(|e| e.code.as_str());
            assert_eq!(err, Some("cross_origin"), "{headers:?}");
        }
    }

    #[test]
    fn page_has_every_placeholder_once() {
        for p in [
            "{{chain}}",
            "{{upstream}}",
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
