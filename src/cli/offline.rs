//! Commands that work without a running broker (or, for `audit checkpoint`, fetch one signed line from
//! it): `audit …` on the trail's files, `dcc …`, `verify-response` and `answer-keys`.

use hyper::Method;

use super::admin::admin_call;
use super::{AnswerKeysCommand, AuditCommand, DccCommand, VerifyResponseArgs};

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("--{name} {v:?}: not an RFC 3339 time ({e})"))
        })
        .transpose()
}

pub(super) fn dcc_command(action: DccCommand) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    let DccCommand::Verify { hc1, file, trust, at } = action;
    let hc1 = match (hc1, file) {
        (Some(text), _) => text,
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => return fail(2, format!("{}: {e}", path.display())),
        },
        (None, None) => return fail(2, "give the HC1: string or --file".into()),
    };
    let at = match parse_time("at", at.as_deref()) {
        Ok(at) => at.unwrap_or_else(chrono::Utc::now),
        Err(e) => return fail(2, e),
    };
    let mut trust_list = crate::dcc::TrustList::default();
    for path in &trust {
        if let Err(e) = trust_list.add_pem_file(path) {
            return fail(2, e);
        }
    }
    match crate::dcc::verify(&hc1, &trust_list, at) {
        Ok(verified) => {
            println!(
                "valid: signed by kid {}, expires {}",
                verified.kid,
                verified.expires.as_deref().unwrap_or("never")
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&verified.dcc).unwrap_or_default()
            );
            0
        }
        Err(refusal) => fail(1, format!("invalid ({}): {refusal}", refusal.code())),
    }
}

pub(super) fn verify_response_command(args: VerifyResponseArgs) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let body = match read(&args.body) {
        Ok(b) => b,
        Err(e) => return fail(2, e),
    };
    let signature = match (args.signature, &args.signature_file) {
        (Some(s), _) => s,
        (None, Some(path)) => match read(path) {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(e) => return fail(2, e),
        },
        (None, None) => return fail(2, "give --signature or --signature-file".into()),
    };
    let jwks: serde_json::Value = match read(&args.jwks).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(2, format!("{}: not JSON ({e})", args.jwks.display())),
        Err(e) => return fail(2, e),
    };
    let signed = match crate::signed_answer::verify(&signature, &body, &jwks) {
        Ok(signed) => signed,
        Err(reason) => return fail(1, format!("invalid: {reason}")),
    };
    for (what, expected) in [
        ("request_id", &args.request_id),
        ("agency", &args.agency),
        ("purpose", &args.purpose),
    ] {
        if let Some(expected) = expected {
            if signed[what] != expected.as_str() {
                return fail(
                    1,
                    format!(
                        "invalid: the signature is for {what} {}, not {expected:?}",
                        signed[what]
                    ),
                );
            }
        }
    }
    println!(
        "valid: signed by key {} at {} for request {}, agency {}, purpose {}",
        signed["kid"].as_str().unwrap_or("?"),
        signed["time"].as_str().unwrap_or("?"),
        signed["request_id"].as_str().unwrap_or("?"),
        signed["agency"].as_str().unwrap_or("-"),
        signed["purpose"].as_str().unwrap_or("-"),
    );
    0
}

pub(super) fn answer_keys_command(action: AnswerKeysCommand) -> i32 {
    let result = match action {
        AnswerKeysCommand::Rotate { data_dir } => crate::signed_answer::AnswerKeys::rotate(&data_dir)
            .map(|kid| format!("new answer-signing key {kid}; the broker uses it from its next start")),
        AnswerKeysCommand::Show { data_dir } => crate::signed_answer::AnswerKeys::open(&data_dir)
            .map(|keys| serde_json::to_string_pretty(keys.jwks()).unwrap_or_default()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("lienthong: {e}");
            1
        }
    }
}

pub(super) async fn audit_command(action: AuditCommand) -> i32 {
    let fail = |code: i32, message: String| {
        eprintln!("lienthong: {message}");
        code
    };
    match action {
        AuditCommand::Checkpoint { admin } => {
            match admin_call(&admin, Method::GET, "/admin/v1/audit/checkpoint", None).await {
                Ok(resp) => {
                    println!("{}", resp.json());
                    0
                }
                Err(code) => code,
            }
        }
        AuditCommand::SignBase { data_dir, key_dir } => {
            let key_dir = key_dir.unwrap_or_else(|| crate::audit::default_key_dir(&data_dir));
            match crate::audit::sign_base(&data_dir.join("audit"), &key_dir) {
                Ok((seq, prev_hash)) => {
                    println!("signed base.json: the trail starts at seq {seq} after {prev_hash}");
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
        AuditCommand::Verify {
            data_dir, witness, ..
        } => {
            let dir = data_dir.join("audit");
            if !dir.is_dir() {
                return fail(2, format!("{}: no audit trail here", dir.display()));
            }
            let heartbeat = crate::progress::Heartbeat::start("verifying the audit trail");
            let (verified, witnessed) = match &witness {
                Some(path) => match crate::audit::check_witness(&dir, path) {
                    Ok((r, n)) => (
                        Ok(r),
                        format!(", {n} witnessed checkpoints match {}", path.display()),
                    ),
                    Err(f) => (Err(f), String::new()),
                },
                None => (crate::audit::verify_dir(&dir), String::new()),
            };
            drop(heartbeat);
            match verified {
                Ok(r) => {
                    // `count` is the seq of the last entry; after a prune fewer entries remain.
                    println!(
                        "ok: {} entries (seq {}..={}), {} signed checkpoints{witnessed}, head {}{}",
                        (r.count + 1).saturating_sub(r.first_seq),
                        r.first_seq,
                        r.count,
                        r.checkpoints,
                        r.head_hash,
                        if r.torn_tail {
                            " (a torn, unacknowledged last line will be cut on next start)"
                        } else {
                            ""
                        }
                    );
                    0
                }
                Err(f) => fail(1, format!("audit chain broken: {f}")),
            }
        }
        AuditCommand::Export {
            data_dir,
            from,
            to,
            out,
            database,
        } => {
            let (from, to) = match (
                parse_time("from", from.as_deref()),
                parse_time("to", to.as_deref()),
            ) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => return fail(2, e),
            };
            let writer: Box<dyn std::io::Write> = match &out {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => return fail(1, format!("{}: {e}", path.display())),
                },
                None => Box::new(std::io::stdout().lock()),
            };
            let progress = crate::progress::Progress::start("exporting audit entries", None);
            let mut writer = crate::progress::CountingLines::new(writer, progress);
            let exported = if database.database.is_some() {
                super::db::export(database, from, to, &mut writer).await
            } else {
                crate::audit::export(&data_dir.join("audit"), from, to, &mut writer)
                    .map_err(|e| e.to_string())
            };
            let mut writer = writer.finish();
            match exported {
                Ok(n) => {
                    let _ = writer.flush();
                    eprintln!("exported {n} entries");
                    0
                }
                Err(e) => fail(1, e),
            }
        }
        AuditCommand::Prune {
            data_dir,
            before,
            older_than_days,
            archive,
            key_dir,
        } => {
            let before = match (before, older_than_days) {
                (_, Some(days)) => chrono::Utc::now() - chrono::Duration::days(i64::from(days)),
                (before, None) => match parse_time("before", before.as_deref()) {
                    Ok(Some(t)) => t,
                    Ok(None) => return fail(2, "give --before or --older-than-days".into()),
                    Err(e) => return fail(2, e),
                },
            };
            let key_dir = key_dir.unwrap_or_else(|| crate::audit::default_key_dir(&data_dir));
            match crate::audit::archive_and_prune(&data_dir.join("audit"), &key_dir, before, &archive) {
                Ok(n) => {
                    println!("archived {n} entries to {}", archive.display());
                    0
                }
                Err(e) => fail(1, e.to_string()),
            }
        }
    }
}
