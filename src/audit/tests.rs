//! Stage: audit — unit tests of the trail (synthetic citizens only).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Duration, Utc};
use tempfile::TempDir;

use super::format::{segment_name, CHECKPOINTS_FILE};
use super::*;

const CITIZEN_A: &str = "001099000001";
const CITIZEN_B: &str = "079203000002";

struct Fixture {
    _tmp: TempDir,
    dir: PathBuf,
    db: sled::Db,
}

fn fixture() -> Fixture {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("audit");
    let db = sled::Config::new().temporary(true).open().unwrap();
    Fixture { _tmp: tmp, dir, db }
}

fn options(checkpoint_every: u64) -> AuditOptions {
    AuditOptions {
        checkpoint_every,
        ..AuditOptions::default()
    }
}

fn record(i: u64, citizen: Option<&str>) -> AuditRecord {
    AuditRecord {
        agency: Some(if i % 2 == 0 { "BYT" } else { "BCA" }.into()),
        cert_fingerprint: Some("ab".repeat(32)),
        purpose: Some("vaccination-status".into()),
        channel: "canonical".into(),
        operation: "read".into(),
        citizen_id: citizen.map(str::to_owned),
        fields: vec!["full_name".into(), "vaccinations".into()],
        status: if i % 5 == 4 { 403 } else { 200 },
        error_code: (i % 5 == 4).then(|| "forbidden_field".into()),
        request_id: format!("req-{i}"),
        request_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        bulk: false,
        metered: false,
        catalogue_version: None,
        answer_sha256: None,
        accountability: None,
        traceparent: None,
    }
}

#[test]
fn answer_hash_is_additive_and_old_entries_hash_as_before() {
    let time = "2026-01-01T00:00:00.000Z".to_string();
    let (old, old_line) = AuditEntry::seal(1, time.clone(), record(1, None), GENESIS_HASH.into()).unwrap();
    // An entry written before the field existed carries no such key, and still hashes the same.
    assert!(!old_line.contains("answer_sha256"), "{old_line}");
    let parsed = AuditEntry::from_line(old_line.as_bytes()).unwrap();
    assert_eq!(parsed.record.answer_sha256, None);
    assert_eq!(parsed.compute_hash().unwrap(), old.hash);
    let answered = AuditRecord {
        answer_sha256: Some("cd".repeat(32)),
        ..record(1, None)
    };
    let (new, new_line) = AuditEntry::seal(1, time, answered, GENESIS_HASH.into()).unwrap();
    assert!(new_line.contains(&format!("\"answer_sha256\":\"{}\"", "cd".repeat(32))));
    assert_ne!(new.hash, old.hash, "the answer hash is covered by the entry hash");
    let parsed = AuditEntry::from_line(new_line.as_bytes()).unwrap();
    assert_eq!(parsed.compute_hash().unwrap(), new.hash);
}

#[test]
fn entries_without_accountability_encode_as_before() {
    // The stored line of an entry written before `accountability` existed: same bytes, same hash.
    let (entry, line) = AuditEntry::seal(
        1,
        "2026-11-23T12:00:00.000Z".into(),
        record(1, None),
        GENESIS_HASH.into(),
    )
    .unwrap();
    assert!(!line.contains("accountability"), "{line}");
    assert!(line.contains("\"metered\":false,\"prev_hash\""), "{line}");
    let parsed = AuditEntry::from_line(line.as_bytes()).unwrap();
    assert_eq!(parsed.compute_hash().unwrap(), entry.hash);
    let with = AuditRecord {
        accountability: Some(crate::accountability::Accountability {
            user_id: Some("EE37702211234".into()),
            ..Default::default()
        }),
        ..record(1, None)
    };
    let (entry, line) =
        AuditEntry::seal(1, "2026-11-23T12:00:00.000Z".into(), with, GENESIS_HASH.into()).unwrap();
    let parsed = AuditEntry::from_line(line.as_bytes()).unwrap();
    assert_eq!(parsed.record.accountability, entry.record.accountability);
    assert_eq!(parsed.compute_hash().unwrap(), entry.hash);
}

async fn fill(log: &AuditLog, n: u64) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    for i in 1..=n {
        let citizen = if i % 3 == 0 { CITIZEN_B } else { CITIZEN_A };
        out.push(log.append(record(i, Some(citizen))).await.unwrap());
    }
    out
}

/// Close, not just drop: the writer must be done with the files before the test reopens or reuses them
/// (a dropped trail's writer may still be answering, or writing a full segment's index, under load).
fn close(log: Arc<AuditLog>) {
    assert!(log.close().is_ok(), "the test holds the only handle");
}

fn only_segment(dir: &Path) -> PathBuf {
    dir.join(segment_name(1))
}

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

#[tokio::test]
async fn append_and_verify_round_trip() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    assert_eq!(log.head(), (0, GENESIS_HASH.to_owned()));
    let entries = fill(&log, 5).await;
    assert_eq!(entries[0].seq, 1);
    assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[0].record, record(1, Some(CITIZEN_A)));
    assert_eq!(entries[0].time.len(), "2026-11-23T12:00:00.123Z".len());
    assert!(entries[0].time.ends_with('Z'));
    assert_eq!(log.head(), (5, entries[4].hash.clone()));
    log.checkpoint().await.unwrap();

    let report = verify_dir(&f.dir).unwrap();
    assert_eq!(report.count, 5);
    assert_eq!(report.head_hash, entries[4].hash);
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.first_seq, 1);
    assert!(!report.torn_tail);

    // The stored line is the entry; the hash covers every field but itself.
    let line = &lines_of(&only_segment(&f.dir))[2];
    let parsed: AuditEntry = serde_json::from_str(line).unwrap();
    assert_eq!(parsed, entries[2]);
    assert!(line.starts_with(r#"{"seq":3,"time":""#));
    assert!(line.contains(r#""bulk":false,"metered":false,"prev_hash":""#));
}

#[tokio::test]
async fn an_empty_trail_verifies() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    log.checkpoint().await.unwrap();
    let report = verify_dir(&f.dir).unwrap();
    assert_eq!((report.count, report.checkpoints), (0, 0));
    assert_eq!(report.head_hash, GENESIS_HASH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(50)).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = Arc::clone(&log);
        tasks.spawn(async move { log.append(record(i, Some(CITIZEN_A))).await.unwrap().seq });
    }
    let mut seqs = Vec::new();
    while let Some(seq) = tasks.join_next().await {
        seqs.push(seq.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(
        log.fsync_count() < 200,
        "{} fsyncs for 200 appends",
        log.fsync_count()
    );
    // Automatic checkpoints are signed after the waiters are answered; this one waits for them.
    log.checkpoint().await.unwrap();
    let report = verify_dir(&f.dir).unwrap();
    assert_eq!(report.count, 200);
    assert!(report.checkpoints >= 1);
    assert_eq!(log.for_citizen(CITIZEN_A, None, 1000).await.unwrap().len(), 200);
}

/// A trail of 10 entries with a signed checkpoint at 8, closed.
async fn tampering_fixture() -> (Fixture, PathBuf) {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 8).await;
    log.checkpoint().await.unwrap();
    fill(&log, 2).await;
    close(log);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 10);
    let segment = only_segment(&f.dir);
    (f, segment)
}

#[tokio::test]
async fn changing_a_field_is_detected_at_that_entry() {
    let (f, segment) = tampering_fixture().await;
    let mut lines = lines_of(&segment);
    assert!(lines[3].contains(r#""status":403"#));
    lines[3] = lines[3].replace(r#""status":403"#, r#""status":200"#);
    write_lines(&segment, &lines);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.seq, 4);
    assert_eq!(failure.to_string(), "entry 4: hash mismatch");
}

#[tokio::test]
async fn a_rehashed_change_breaks_the_next_link() {
    let (f, segment) = tampering_fixture().await;
    let mut lines = lines_of(&segment);
    let mut entry: AuditEntry = serde_json::from_str(&lines[3]).unwrap();
    entry.record.citizen_id = Some(CITIZEN_B.into());
    entry.hash = entry.compute_hash().unwrap();
    lines[3] = serde_json::to_string(&entry).unwrap();
    write_lines(&segment, &lines);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.seq, 5);
    assert!(failure.reason.contains("prev_hash"), "{failure}");
}

#[tokio::test]
async fn an_extra_field_is_detected() {
    let (f, segment) = tampering_fixture().await;
    let mut lines = lines_of(&segment);
    lines[5] = lines[5].replacen('{', r#"{"note":"x","#, 1);
    write_lines(&segment, &lines);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.seq, 6);
    assert!(failure.reason.contains("canonical"), "{failure}");
}

#[tokio::test]
async fn deleting_an_entry_is_detected_at_that_entry() {
    let (f, segment) = tampering_fixture().await;
    let mut lines = lines_of(&segment);
    lines.remove(6);
    write_lines(&segment, &lines);
    assert_eq!(verify_dir(&f.dir).unwrap_err().seq, 7);
}

#[tokio::test]
async fn swapping_entries_is_detected_at_the_first() {
    let (f, segment) = tampering_fixture().await;
    let mut lines = lines_of(&segment);
    lines.swap(2, 3);
    write_lines(&segment, &lines);
    assert_eq!(verify_dir(&f.dir).unwrap_err().seq, 3);
}

#[tokio::test]
async fn truncating_below_a_checkpoint_is_detected() {
    let (f, segment) = tampering_fixture().await;
    let lines = lines_of(&segment);
    write_lines(&segment, &lines[..5]);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.seq, 6);
    assert!(failure.reason.contains("checkpoint"), "{failure}");
    // Nor does the broker start on it and write a conflicting seq 6.
    assert!(matches!(
        AuditLog::open(&f.dir, f.db.clone(), 0),
        Err(AuditError::Corrupt(_))
    ));

    // Truncating after the checkpoint is not provable (nothing signed it), but the rest still verifies.
    let (f, segment) = tampering_fixture().await;
    write_lines(&segment, &lines_of(&segment)[..8]);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 8);
}

#[tokio::test]
async fn rewriting_the_tail_is_detected_by_the_checkpoint() {
    let (f, segment) = tampering_fixture().await;
    // Rewrite entry 7 and re-chain everything after it: every link is consistent again.
    let mut lines = lines_of(&segment);
    let mut prev: AuditEntry = serde_json::from_str(&lines[5]).unwrap();
    for line in &mut lines[6..] {
        let mut entry: AuditEntry = serde_json::from_str(line).unwrap();
        if entry.seq == 7 {
            entry.record.fields.push("phone".into());
        }
        entry.prev_hash = prev.hash.clone();
        entry.hash = entry.compute_hash().unwrap();
        *line = serde_json::to_string(&entry).unwrap();
        prev = entry;
    }
    write_lines(&segment, &lines);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.seq, 8);
    assert!(failure.reason.contains("signed checkpoint"), "{failure}");
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_detected() {
    let (f, _) = tampering_fixture().await;
    let path = f.dir.join(CHECKPOINTS_FILE);
    let mut checkpoint: serde_json::Value = serde_json::from_str(&lines_of(&path)[0]).unwrap();
    let signature = checkpoint["signature"].as_str().unwrap().to_owned();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    checkpoint["signature"] = format!("{flipped}{}", &signature[1..]).into();
    write_lines(&path, &[checkpoint.to_string()]);
    let failure = verify_dir(&f.dir).unwrap_err();
    assert_eq!(failure.to_string(), "entry 8: checkpoint signature invalid");

    // A checkpoint signed by another key is no better.
    let other = fixture();
    let log = AuditLog::open_with(&other.dir, other.db.clone(), options(0)).unwrap();
    fill(&log, 8).await;
    log.checkpoint().await.unwrap();
    fs::copy(other.dir.join(CHECKPOINTS_FILE), &path).unwrap();
    assert_eq!(verify_dir(&f.dir).unwrap_err().seq, 8);
}

#[tokio::test]
async fn torn_last_line_is_cut_on_reopen() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 3).await;
    close(log);
    let segment = only_segment(&f.dir);
    let whole = fs::metadata(&segment).unwrap().len();
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(br#"{"seq":4,"time":"2026-11-2"#);
    fs::write(&segment, bytes).unwrap();
    // Offline, the torn line is reported but not an error: it was never acknowledged.
    let report = verify_dir(&f.dir).unwrap();
    assert!(report.torn_tail);
    assert_eq!(report.count, 3);

    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), whole);
    assert_eq!(log.head().0, 3);
    assert_eq!(log.append(record(4, None)).await.unwrap().seq, 4);
    let report = verify_dir(&f.dir).unwrap();
    assert_eq!(report.count, 4);
    assert!(!report.torn_tail);
}

/// The segment's length without the zeros the writer writes ahead of the open segment's end.
fn written_len(segment: &Path) -> u64 {
    let bytes = fs::read(segment).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1)
}

#[tokio::test]
async fn the_zeros_written_ahead_are_cut_on_close_and_read_past_after_a_crash() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 3).await;
    let segment = only_segment(&f.dir);
    // Open: the file runs past its last line, in zeros.
    let whole = written_len(&segment);
    assert!(fs::metadata(&segment).unwrap().len() > whole);
    close(log);
    assert_eq!(fs::metadata(&segment).unwrap().len(), whole);

    // A crash leaves them: nothing is torn, the count is whole, and the trail goes on after them.
    let mut bytes = fs::read(&segment).unwrap();
    bytes.resize(bytes.len() + 4096, 0);
    fs::write(&segment, &bytes).unwrap();
    let report = verify_dir(&f.dir).unwrap();
    assert!(!report.torn_tail);
    assert_eq!(report.count, 3);
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    assert_eq!(log.append(record(4, None)).await.unwrap().seq, 4);
    close(log);
    let text = fs::read(&segment).unwrap();
    assert_eq!(text.last(), Some(&b'\n'));
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 4);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 4);

    // A line torn by the crash, then zeros: torn, and cut on reopen.
    let mut bytes = fs::read(&segment).unwrap();
    let whole = bytes.len() as u64;
    bytes.extend_from_slice(br#"{"seq":5,"ti"#);
    bytes.resize(bytes.len() + 4096, 0);
    fs::write(&segment, &bytes).unwrap();
    assert!(verify_dir(&f.dir).unwrap().torn_tail);
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    assert_eq!(written_len(&segment), whole);
    assert_eq!(log.append(record(5, None)).await.unwrap().seq, 5);
    close(log);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 5);
}

#[tokio::test]
async fn failed_writes_leave_nothing_and_recover() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 2).await;
    let segment = only_segment(&f.dir);
    let len = written_len(&segment);
    let head = log.head();

    log.set_fail_writes(true);
    for i in 0..3 {
        let err = log.append(record(10 + i, Some(CITIZEN_B))).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
    }
    assert!(log.checkpoint().await.is_err());
    let api: crate::error::ApiError = AuditError::Unavailable("disk full".into()).into();
    assert_eq!(
        (api.status.as_u16(), api.code.as_str()),
        (503, "audit_unavailable")
    );
    assert_eq!(written_len(&segment), len);
    assert_eq!(log.head(), head);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 2);

    log.set_fail_writes(false);
    let entry = log.append(record(3, Some(CITIZEN_B))).await.unwrap();
    assert_eq!(entry.seq, 3);
    assert_eq!(entry.prev_hash, head.1);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 3);
    assert_eq!(log.for_citizen(CITIZEN_B, None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn for_citizen_returns_only_that_citizen_newest_first() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 9).await; // B at 3, 6, 9; A elsewhere
    log.append(record(10, None)).await.unwrap();
    // A citizen id that is a prefix of another must not see the other's entries.
    log.append(record(11, Some(&CITIZEN_A[..11]))).await.unwrap();

    let b: Vec<u64> = log
        .for_citizen(CITIZEN_B, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(b, [9, 6, 3]);
    let a: Vec<u64> = log
        .for_citizen(CITIZEN_A, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(a, [8, 7, 5, 4, 2, 1]);
    let page: Vec<u64> = log
        .for_citizen(CITIZEN_A, Some(5), 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, [4, 2]);
    assert!(log.for_citizen(CITIZEN_A, Some(1), 10).await.unwrap().is_empty());
    assert!(log.for_citizen(CITIZEN_A, None, 0).await.unwrap().is_empty());
    assert!(log
        .for_citizen("000000000000", None, 10)
        .await
        .unwrap()
        .is_empty());
    let short = log.for_citizen(&CITIZEN_A[..11], None, 10).await.unwrap();
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].seq, 11);
}

#[tokio::test]
async fn search_filters_and_pages() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    let entries = fill(&log, 10).await;
    let seqs = |v: Vec<AuditEntry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();

    let all = seqs(log.search(&AuditFilter::default(), None, 100).await.unwrap());
    assert_eq!(all, (1..=10).rev().collect::<Vec<_>>());
    let byt = AuditFilter {
        agency: Some("BYT".into()),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(log.search(&byt, None, 100).await.unwrap()), [10, 8, 6, 4, 2]);
    assert_eq!(seqs(log.search(&byt, Some(8), 2).await.unwrap()), [6, 4]);
    let refused = AuditFilter {
        status: Some(403),
        ..AuditFilter::default()
    };
    assert_eq!(seqs(log.search(&refused, None, 100).await.unwrap()), [9, 4]);
    let both = AuditFilter {
        citizen_id: Some(CITIZEN_A.into()),
        agency: Some("BCA".into()),
        ..byt.clone()
    };
    assert_eq!(seqs(log.search(&both, None, 100).await.unwrap()), [7, 5, 1]);
    let nobody = AuditFilter {
        purpose: Some("tax".into()),
        ..AuditFilter::default()
    };
    assert!(log.search(&nobody, None, 100).await.unwrap().is_empty());

    let t5 = entries[4].parsed_time().unwrap();
    let window = AuditFilter {
        from: Some(t5),
        to: Some(t5 + Duration::milliseconds(1)),
        ..Default::default()
    };
    let expected: Vec<u64> = entries
        .iter()
        .rev()
        .filter(|e| e.time == entries[4].time)
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs(log.search(&window, None, 100).await.unwrap()), expected);
    let future = AuditFilter {
        from: Some(Utc::now() + Duration::hours(1)),
        ..Default::default()
    };
    assert!(log.search(&future, None, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn export_writes_the_time_range() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    let mut entries = fill(&log, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    entries.extend(fill(&log, 3).await);
    let cut = entries[3].parsed_time().unwrap();

    let mut out = Vec::new();
    assert_eq!(export(&f.dir, None, None, &mut out).unwrap(), 6);
    let exported: Vec<AuditEntry> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported, entries);

    let older = entries.iter().filter(|e| e.parsed_time().unwrap() < cut).count() as u64;
    assert_eq!(older, 3);
    let mut out = Vec::new();
    assert_eq!(export(&f.dir, None, Some(cut), &mut out).unwrap(), 3);
    let mut out = Vec::new();
    assert_eq!(export(&f.dir, Some(cut), None, &mut out).unwrap(), 3);
    assert!(String::from_utf8(out).unwrap().starts_with(r#"{"seq":4,"#));
    let mut out = Vec::new();
    assert_eq!(export(&f.dir, Some(cut), Some(cut), &mut out).unwrap(), 0);
    assert!(out.is_empty());
}

#[tokio::test]
async fn archive_and_prune_keeps_the_rest_verifiable() {
    let f = fixture();
    let opts = AuditOptions {
        checkpoint_every: 4,
        segment_max_entries: 3,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts.clone()).unwrap();
    let entries = fill(&log, 10).await; // segments 1-3, 4-6, 7-9, 10
    close(log);
    assert_eq!(format::list_segments(&f.dir).unwrap().len(), 4);

    let archive = f.dir.parent().unwrap().join("archive-1.jsonl");
    // Nothing is old enough yet.
    let long_ago = entries[0].parsed_time().unwrap();
    assert_eq!(archive_and_prune(&f.dir, &f.dir, long_ago, &archive).unwrap(), 0);
    assert!(!archive.exists());

    let later = Utc::now() + Duration::hours(1);
    assert_eq!(archive_and_prune(&f.dir, &f.dir, later, &archive).unwrap(), 9);
    assert_eq!(format::list_segments(&f.dir).unwrap().len(), 1);
    let archived = lines_of(&archive);
    let header: serde_json::Value = serde_json::from_str(&archived[0]).unwrap();
    assert_eq!(header["continues_from"]["seq"], 1);
    assert_eq!(header["continues_from"]["prev_hash"], GENESIS_HASH);
    assert_eq!(archived.len(), 10);
    assert_eq!(
        serde_json::from_str::<AuditEntry>(&archived[9]).unwrap(),
        entries[8]
    );

    let report = verify_dir(&f.dir).unwrap();
    assert_eq!((report.first_seq, report.count), (10, 10));
    assert_eq!(report.head_hash, entries[9].hash);
    // Checkpoints at 4 and 8 point into the archive; none is left to check against the chain.
    assert_eq!(report.checkpoints, 0);

    // The broker reopens on the pruned trail: the index forgets archived entries, appends continue.
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts).unwrap();
    assert_eq!(log.head(), (10, entries[9].hash.clone()));
    let seqs: Vec<u64> = log
        .for_citizen(CITIZEN_A, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [10]);
    fill(&log, 3).await;
    log.checkpoint().await.unwrap();
    let report = verify_dir(&f.dir).unwrap();
    // The automatic one at 12 and the one asked for at 13.
    assert_eq!((report.first_seq, report.count, report.checkpoints), (10, 13, 2));

    // The base a prune leaves is signed: one written by hand (to hide deleted older segments) is refused,
    // by verify and at open.
    let signed = fs::read_to_string(f.dir.join(format::BASE_FILE)).unwrap();
    assert!(signed.contains("signature"), "{signed}");
    let unsigned = serde_json::json!({ "seq": 10, "prev_hash": entries[8].hash }).to_string();
    fs::write(f.dir.join(format::BASE_FILE), unsigned).unwrap();
    let failure = verify_dir(&f.dir).unwrap_err();
    assert!(failure.reason.contains("not signed"), "{failure}");
    assert!(AuditLog::open(&f.dir, f.db.clone(), 0).is_err());
    // A trail pruned before bases were signed is accepted again once the operator signs its base.
    assert_eq!(sign_base(&f.dir, &f.dir).unwrap().0, 10);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 13);
    fs::write(f.dir.join(format::BASE_FILE), signed).unwrap();

    // Deleting the base (or a segment) after pruning is caught.
    fs::remove_file(f.dir.join(format::BASE_FILE)).unwrap();
    assert_eq!(verify_dir(&f.dir).unwrap_err().seq, 1);
}

#[tokio::test]
async fn segments_rotate_and_verify_across_files() {
    let f = fixture();
    let opts = AuditOptions {
        checkpoint_every: 0,
        segment_max_entries: 4,
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts.clone()).unwrap();
    fill(&log, 9).await;
    close(log);
    let names: Vec<u64> = format::list_segments(&f.dir)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(names, [1, 5, 9]);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 9);
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts).unwrap();
    assert_eq!(log.append(record(10, None)).await.unwrap().seq, 10);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 10);

    // Removing a middle segment is caught at its first entry.
    fs::remove_file(f.dir.join(segment_name(5))).unwrap();
    assert_eq!(verify_dir(&f.dir).unwrap_err().seq, 5);
}

#[tokio::test]
async fn a_fresh_index_is_rebuilt_from_the_segments() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    fill(&log, 6).await;
    close(log);

    let db = sled::Config::new().temporary(true).open().unwrap();
    let log = AuditLog::open_with(&f.dir, db, options(0)).unwrap();
    let seqs: Vec<u64> = log
        .for_citizen(CITIZEN_B, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [6, 3]);

    // An index describing another chain is thrown away, not mixed in.
    let other = fixture();
    let log = AuditLog::open_with(&other.dir, f.db.clone(), options(0)).unwrap();
    log.append(record(1, Some(CITIZEN_B))).await.unwrap();
    assert_eq!(log.for_citizen(CITIZEN_B, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        log.search(&AuditFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[cfg(unix)]
#[test]
fn signing_key_is_private_and_its_public_half_published() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    close(log);
    let mode = fs::metadata(f.dir.join(format::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = format::read_public_key(&f.dir).unwrap();
    assert_eq!(public.len(), 32);
    // Reopening keeps the same key.
    drop(AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap());
    assert_eq!(format::read_public_key(&f.dir).unwrap(), public);
}

#[test]
fn sealing_serialises_once_yet_matches_the_documented_line_and_hash() {
    for (i, citizen) in [(1, Some(CITIZEN_A)), (4, None), (9, Some("0\"\\\u{1}é"))] {
        let (entry, line) = AuditEntry::seal(
            i,
            "2026-12-02T10:00:00.000Z".into(),
            record(i, citizen),
            "ab".repeat(32),
        )
        .unwrap();
        assert_eq!(line, entry.to_line().unwrap());
        assert_eq!(entry.hash, entry.compute_hash().unwrap());
        assert_eq!(AuditEntry::from_line(line.as_bytes()).unwrap(), entry);
    }
}

#[tokio::test]
async fn an_index_left_in_sled_by_an_older_version_is_dropped_and_rebuilt_from_the_segments() {
    let f = fixture();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    let written = fill(&log, 6).await;
    close(log);
    // Older versions kept the index in sled, whole lines by seq.
    let by_seq = f.db.open_tree("audit/by_seq").unwrap();
    for entry in &written {
        by_seq
            .insert(entry.seq.to_be_bytes(), entry.to_line().unwrap().as_bytes())
            .unwrap();
    }
    drop(by_seq);
    let log = AuditLog::open_with(&f.dir, f.db.clone(), options(0)).unwrap();
    assert!(!f.db.tree_names().iter().any(|name| name.starts_with(b"audit/")));
    log.append(record(7, Some(CITIZEN_A))).await.unwrap();
    let found = log.search(&AuditFilter::default(), None, 100).await.unwrap();
    let seqs: Vec<u64> = found.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(found[6], written[0]);
}

/// The `.idx` files in the trail's folder, by name.
fn index_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".idx"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn full_segments_are_indexed_to_files_and_searches_span_them() {
    let f = fixture();
    let opts = AuditOptions {
        segment_max_entries: 4,
        ..options(0)
    };
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts.clone()).unwrap();
    fill(&log, 10).await; // segments 1-4, 5-8, 9-10; B at 3, 6, 9
    assert_eq!(
        index_files(&f.dir),
        [
            format!("{}.idx", segment_name(1)),
            format!("{}.idx", segment_name(5))
        ]
    );
    let seqs = |v: Vec<AuditEntry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let expect = |log: Arc<AuditLog>| async move {
        assert_eq!(
            seqs(log.for_citizen(CITIZEN_B, None, 10).await.unwrap()),
            [9, 6, 3]
        );
        assert_eq!(
            seqs(log.for_citizen(CITIZEN_A, Some(8), 3).await.unwrap()),
            [7, 5, 4]
        );
        let all = log.search(&AuditFilter::default(), None, 100).await.unwrap();
        assert_eq!(seqs(all), (1..=10).rev().collect::<Vec<_>>());
        let byt = AuditFilter {
            agency: Some("BYT".into()),
            ..AuditFilter::default()
        };
        assert_eq!(seqs(log.search(&byt, Some(9), 100).await.unwrap()), [8, 6, 4, 2]);
        assert_eq!(
            seqs(log.search(&AuditFilter::default(), Some(6), 3).await.unwrap()),
            [5, 4, 3]
        );
        log
    };
    let log = expect(log).await;
    drop(log);

    // Reopened: the files are used as they are; a stale or torn one is rebuilt, a missing one too.
    let stale = f.dir.join(format!("{}.idx", segment_name(1)));
    fs::write(&stale, b"LTAIDX01 not an index").unwrap();
    fs::remove_file(f.dir.join(format!("{}.idx", segment_name(5)))).unwrap();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts.clone()).unwrap();
    assert_eq!(index_files(&f.dir).len(), 2);
    let log = expect(log).await;
    drop(log);

    // An index whose segment was pruned away is removed.
    let orphan = f.dir.join(format!("{}.idx", segment_name(99)));
    fs::copy(&stale, &orphan).unwrap();
    let log = AuditLog::open_with(&f.dir, f.db.clone(), opts).unwrap();
    assert!(!orphan.exists());
    expect(log).await;
}

#[tokio::test]
async fn the_catalogue_version_is_additive_and_dated_by_the_clock() {
    let f = fixture();
    let clock = crate::clock::Clock::default();
    let t = chrono::DateTime::parse_from_rfc3339("2031-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    clock.set(t);
    let log = AuditLog::open_with(
        &f.dir,
        f.db.clone(),
        AuditOptions {
            clock: clock.clone(),
            ..options(0)
        },
    )
    .unwrap();
    // An entry written before versions existed, and one that names the version that served it.
    let old = log.append(record(1, Some(CITIZEN_A))).await.unwrap();
    let versioned = log
        .append(AuditRecord {
            catalogue_version: Some("2027".into()),
            ..record(2, Some(CITIZEN_A))
        })
        .await
        .unwrap();
    assert_eq!(old.time, "2031-01-01T00:00:00.000Z");
    let lines = lines_of(&only_segment(&f.dir));
    assert!(!lines[0].contains("catalogue_version"), "{}", lines[0]);
    assert!(lines[1].contains(r#""metered":false,"catalogue_version":"2027","prev_hash":""#));
    assert_eq!(versioned.compute_hash().unwrap(), versioned.hash);
    assert_eq!(verify_dir(&f.dir).unwrap().count, 2);
    // A statement signed with the trail's key verifies with the published public key.
    let signed = log.sign_statement("test-domain-v1", b"hello");
    let public = crate::audit::format::read_public_key(&f.dir).unwrap();
    assert_eq!(hex::encode(&public), signed.public_key);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(b"test-domain-v1\nhello", &hex::decode(&signed.signature).unwrap())
        .unwrap();
}
