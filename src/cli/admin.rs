//! The operator's commands that drive a running broker's admin API over mTLS: `agency …`, `billing …`,
//! `catalogue …` and `citizens import`.

use std::path::PathBuf;

use hyper::Method;

use super::{AdminTarget, AgencyCommand, BillingCommand, CatalogueCommand};
use crate::client::{Alpn, MtlsClient};

/// Call the admin API; the answer, or the exit code after printing why it failed.
pub(super) async fn admin_call(
    admin: &AdminTarget,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<crate::client::Response, i32> {
    let body = body.map(|b| ("application/json", b.to_string()));
    admin_call_with(admin, method, path, body).await
}

/// [`admin_call`] with a body of any type: `(content type, body)`.
async fn admin_call_with(
    admin: &AdminTarget,
    method: Method,
    path: &str,
    body: Option<(&'static str, String)>,
) -> Result<crate::client::Response, i32> {
    let client = MtlsClient::from_files(&admin.cacert, &admin.cert, &admin.key, Alpn::Both).map_err(|e| {
        eprintln!("lienthong: {e}");
        2
    })?;
    // The admin API refuses a POST without a JSON content type (a cross-site form could send it).
    let (content_type, body) = match body {
        Some((content_type, body)) => (Some(content_type), body),
        None if method == Method::POST => (Some("application/json"), String::new()),
        None => (None, String::new()),
    };
    let resp = client
        .request(admin.admin_addr, method, path, content_type, body)
        .await
        .map_err(|e| {
            eprintln!(
                "lienthong: cannot reach the admin API at {}: {e}",
                admin.admin_addr
            );
            1
        })?;
    if resp.status >= 300 {
        eprintln!("lienthong: admin API answered {}: {}", resp.status, resp.text());
        return Err(1);
    }
    Ok(resp)
}

/// `lienthong citizens import FILE`: batches of whole lines (at most `batch_lines`, and under 512 KiB so
/// that the default 1 MiB body limit holds), sent in order. The first refused batch stops the import:
/// the batches before it are written, it and the rest are not, and its bad lines are printed with their
/// line numbers in the file.
pub(super) async fn import_command(admin: AdminTarget, file: &std::path::Path, batch_lines: usize) -> i32 {
    const BATCH_BYTES: usize = 512 * 1024;
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lienthong: {}: {e}", file.display());
            return 2;
        }
    };
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop(); // the file's final newline ends the last line; it starts none
    }
    let total = lines.len();
    let client = match MtlsClient::from_files(&admin.cacert, &admin.cert, &admin.key, Alpn::Both) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lienthong: {e}");
            return 2;
        }
    };
    let (mut start, mut imported) = (0usize, 0u64);
    let mut progress = crate::progress::Progress::start("importing citizens (lines)", Some(total as u64));
    while start < total {
        let mut end = start;
        let mut bytes = 0;
        while end < total
            && end - start < batch_lines.max(1)
            && (end == start || bytes + lines[end].len() < BATCH_BYTES)
        {
            bytes += lines[end].len() + 1;
            end += 1;
        }
        let body = lines[start..end].join(&b'\n');
        let resp = match client
            .request(
                admin.admin_addr,
                Method::POST,
                "/admin/v1/citizens/import",
                Some("application/x-ndjson"),
                body,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "lienthong: cannot reach the admin API at {}: {e}",
                    admin.admin_addr
                );
                return 1;
            }
        };
        let answer = resp.json();
        if resp.status != 200 {
            progress.bar_clear();
            eprintln!(
                "lienthong: {}: lines {}-{} refused ({} {}): {}",
                file.display(),
                start + 1,
                end,
                resp.status,
                answer["error"]["code"].as_str().unwrap_or("?"),
                answer["error"]["message"].as_str().unwrap_or(&resp.text())
            );
            for bad in answer["error"]["lines"].as_array().into_iter().flatten() {
                let line = bad["line"].as_u64().unwrap_or(0) + start as u64;
                eprintln!(
                    "  line {line}: {} {}",
                    bad["code"].as_str().unwrap_or("?"),
                    bad["message"].as_str().unwrap_or("")
                );
            }
            eprintln!(
                "lienthong: {imported} citizens imported before line {}; fix the file and import from there",
                start + 1
            );
            return 1;
        }
        imported += answer["imported"].as_u64().unwrap_or(0);
        progress.advance((end - start) as u64);
        start = end;
    }
    progress.finish();
    println!("imported {imported} citizens from {}", file.display());
    0
}

pub(super) fn pretty(resp: &crate::client::Response) -> String {
    serde_json::to_string_pretty(&resp.json()).unwrap_or_else(|_| resp.text())
}

pub(super) async fn billing_command(admin: AdminTarget, action: BillingCommand) -> i32 {
    let month_q = |m: &Option<String>| m.as_ref().map(|m| format!("month={m}&")).unwrap_or_default();
    match action {
        BillingCommand::Report { month, format } => {
            let path = format!("/admin/v1/billing/report?{}format={format}", month_q(&month));
            match admin_call(&admin, Method::GET, &path, None).await {
                Ok(resp) if format == "csv" => {
                    print!("{}", resp.text());
                    0
                }
                Ok(resp) => {
                    println!("{}", pretty(&resp));
                    0
                }
                Err(code) => code,
            }
        }
        BillingCommand::Close { month, format, out } => {
            let path = format!("/admin/v1/billing/close?month={month}&format={format}");
            match admin_call(&admin, Method::POST, &path, None).await {
                Ok(resp) => {
                    let text = if format == "csv" {
                        resp.text()
                    } else {
                        format!("{}\n", pretty(&resp))
                    };
                    match out {
                        Some(file) => match std::fs::write(&file, text) {
                            Ok(()) => {
                                println!("closed {month}: written to {}", file.display());
                                0
                            }
                            Err(e) => {
                                eprintln!("lienthong: {}: {e} (the month is closed; fetch it again with GET /admin/v1/billing/closed)", file.display());
                                1
                            }
                        },
                        None => {
                            print!("{text}");
                            0
                        }
                    }
                }
                Err(code) => code,
            }
        }
        BillingCommand::Reconcile { month } => {
            let path = format!("/admin/v1/billing/reconcile?{}", month_q(&month));
            match admin_call(&admin, Method::GET, &path, None).await {
                Ok(resp) => {
                    println!("{}", pretty(&resp));
                    if resp.json()["ok"] == true {
                        0
                    } else {
                        eprintln!("lienthong: the billing counters differ from the audit trail");
                        1
                    }
                }
                Err(code) => code,
            }
        }
    }
}

pub(super) async fn catalogue_command(admin: AdminTarget, action: CatalogueCommand) -> i32 {
    let call = match action {
        CatalogueCommand::Load { file } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("lienthong: {}: {e}", file.display());
                    return 2;
                }
            };
            let name = file.display().to_string();
            let origin = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
            let path = format!("/admin/v1/catalogue/versions?origin={origin}");
            admin_call_with(&admin, Method::POST, &path, Some(("application/toml", text))).await
        }
        CatalogueCommand::Versions => {
            admin_call(&admin, Method::GET, "/admin/v1/catalogue/versions", None).await
        }
        CatalogueCommand::Diff { from, to } => {
            let to = to.map(|t| format!("&to={t}")).unwrap_or_default();
            let path = format!("/admin/v1/catalogue/diff?from={from}{to}");
            admin_call(&admin, Method::GET, &path, None).await
        }
    };
    match call {
        Ok(resp) => {
            println!("{}", pretty(&resp));
            0
        }
        Err(code) => code,
    }
}

pub(super) async fn agency_command(admin: AdminTarget, action: AgencyCommand) -> i32 {
    let cert_fp = |path: &PathBuf| crate::identity::fingerprint_of_pem_file(path).map_err(|e| e.to_string());
    let call = match action {
        AgencyCommand::List => Ok((Method::GET, "/admin/v1/agencies".to_string(), None)),
        AgencyCommand::Show { code } => Ok((Method::GET, format!("/admin/v1/agencies/{code}"), None)),
        AgencyCommand::Add {
            code,
            name,
            billing_class,
            cert_file,
        } => cert_file.as_ref().map(cert_fp).transpose().map(|fp| {
            let body = serde_json::json!({
                "code": code, "name": name, "billing_class": billing_class,
                "fingerprints": fp.into_iter().collect::<Vec<_>>(),
            });
            (Method::POST, "/admin/v1/agencies".to_string(), Some(body))
        }),
        AgencyCommand::Bind {
            code,
            cert_file,
            fingerprint,
        } => {
            let fp = match (cert_file, fingerprint) {
                (Some(file), _) => cert_fp(&file),
                (None, Some(fp)) => Ok(fp),
                (None, None) => Err("give --cert-file or --fingerprint".to_string()),
            };
            fp.map(|fp| {
                let body = serde_json::json!({ "fingerprint": fp });
                (
                    Method::POST,
                    format!("/admin/v1/agencies/{code}/certificates"),
                    Some(body),
                )
            })
        }
        AgencyCommand::Unbind { code, fingerprint } => Ok((
            Method::DELETE,
            format!("/admin/v1/agencies/{code}/certificates/{fingerprint}"),
            None,
        )),
        AgencyCommand::Suspend { code } => {
            Ok((Method::POST, format!("/admin/v1/agencies/{code}/suspend"), None))
        }
        AgencyCommand::Resume { code } => {
            Ok((Method::POST, format!("/admin/v1/agencies/{code}/resume"), None))
        }
        AgencyCommand::Grant { code, purpose } => Ok((
            Method::POST,
            format!("/admin/v1/agencies/{code}/purposes/{purpose}"),
            None,
        )),
        AgencyCommand::Revoke { code, purpose } => Ok((
            Method::DELETE,
            format!("/admin/v1/agencies/{code}/purposes/{purpose}"),
            None,
        )),
        AgencyCommand::Usage { code } => Ok((Method::GET, format!("/admin/v1/agencies/{code}/usage"), None)),
        AgencyCommand::Xroad {
            code, clear: true, ..
        } => Ok((Method::DELETE, format!("/admin/v1/agencies/{code}/xroad"), None)),
        AgencyCommand::Xroad { code, client, .. } => {
            crate::doors::xroad::ClientId::parse(client.as_deref().unwrap_or_default())
                .map_err(|e| e.message)
                .and_then(|id| serde_json::to_value(id).map_err(|e| e.to_string()))
                .map(|body| {
                    (
                        Method::PUT,
                        format!("/admin/v1/agencies/{code}/xroad"),
                        Some(body),
                    )
                })
        }
        AgencyCommand::BillingClass { code, class } => Ok((
            Method::PUT,
            format!("/admin/v1/agencies/{code}/billing-class"),
            Some(serde_json::json!({ "billing_class": class })),
        )),
        AgencyCommand::Plan {
            code,
            purpose,
            per_minute,
            per_day,
            per_month,
        } => {
            let mut limits = serde_json::Map::new();
            for (k, v) in [
                ("per_minute", per_minute),
                ("per_day", per_day),
                ("per_month", per_month),
            ] {
                if let Some(v) = v {
                    limits.insert(k.into(), v.into());
                }
            }
            Ok((
                Method::PUT,
                format!("/admin/v1/agencies/{code}/plan"),
                Some(serde_json::json!({ "limits": { purpose: limits } })),
            ))
        }
    };
    let (method, path, body) = match call {
        Ok(call) => call,
        Err(e) => {
            eprintln!("lienthong: {e}");
            return 2;
        }
    };
    match admin_call(&admin, method, &path, body).await {
        Ok(resp) => {
            println!("{}", pretty(&resp));
            0
        }
        Err(code) => code,
    }
}
