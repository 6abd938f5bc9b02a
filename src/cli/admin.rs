//! The operator's commands that drive a running broker's admin API over mTLS: `agency …` and
//! `billing …`.

use std::path::PathBuf;

use hyper::Method;

use super::{AdminTarget, AgencyCommand, BillingCommand};
use crate::client::{Alpn, MtlsClient};

/// Call the admin API; the answer, or the exit code after printing why it failed.
async fn admin_call(
    admin: &AdminTarget,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<crate::client::Response, i32> {
    let client = MtlsClient::from_files(&admin.cacert, &admin.cert, &admin.key, Alpn::Both).map_err(|e| {
        eprintln!("lienthong: {e}");
        2
    })?;
    let (content_type, body) = match body {
        Some(b) => (Some("application/json"), b.to_string()),
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

fn pretty(resp: &crate::client::Response) -> String {
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
        AgencyCommand::Usage { code } => Ok((Method::GET, format!("/admin/v1/agencies/{code}/usage"), None)),
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
