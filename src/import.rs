//! Loading citizens into a running broker: `POST /admin/v1/citizens/import` takes JSON Lines (one
//! canonical record per line), checks every line as a write would be checked (strict JSON, the canonical
//! schema, the ID consistent with birth year and gender, one line per citizen), and writes the batch
//! only if every line passes — all or nothing. Through the admin API because sled allows one process
//! per database; `lienthong citizens import FILE` splits a file into batches under the body limit.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::exchange::{ReadRequest, Reply};

/// Media types accepted for a batch.
const MEDIA_TYPES: [&str; 3] = ["application/x-ndjson", "application/jsonl", "application/json"];

/// Stop listing refused lines after this many (the count still covers all of them).
const MAX_REPORTED_LINES: usize = 100;

/// One refused line: its 1-based number in the batch, the error code and why.
fn refused(line: usize, err: &ApiError) -> Value {
    json!({ "line": line, "code": err.code, "message": err.message })
}

/// Import one batch: 200 `{"imported": n}` with every record written, or 422 `invalid_import` listing
/// the refused lines (`{"error": {…, "lines": [{"line", "code", "message"}]}}`) with nothing written.
pub async fn import_batch(broker: &Broker, req: &ReadRequest, request_id: &str) -> Result<Reply, ApiError> {
    req.require_media_type(&MEDIA_TYPES, "application/x-ndjson (JSON Lines)")?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let mut bad_count = 0usize;
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (index, line) in req.body.split(|b| *b == b'\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let checked = crate::json::parse(line).and_then(|record| {
            crate::canonical::validate_record(broker, &record)?;
            let id = record["citizen_id"].as_str().unwrap_or_default().to_string();
            if let Some(first) = first_line_of.insert(id.clone(), number) {
                return Err(ApiError::new(
                    ErrorCode::DuplicateCitizen,
                    format!("the same citizen_id as line {first}"),
                ));
            }
            Ok((id, record))
        });
        match checked {
            Ok(record) => records.push(record),
            Err(e) => {
                bad_count += 1;
                if bad.len() < MAX_REPORTED_LINES {
                    bad.push(refused(number, &e));
                }
            }
        }
    }
    if bad_count > 0 {
        let err = ApiError::new(
            ErrorCode::InvalidImport,
            format!("{bad_count} line(s) refused; nothing from this batch was written"),
        );
        let mut body = err.to_json(request_id);
        body["error"]["lines"] = Value::Array(bad);
        let mut reply = Reply::json(err.status, &body);
        reply.error_code = Some(err.code);
        return Ok(reply);
    }
    let imported = records.len();
    broker.store.put_many(records).await?;
    tracing::info!(imported, "citizens imported");
    Ok(Reply::json(StatusCode::OK, &json!({ "imported": imported })))
}
