//! Unit tests of [`super`].

use super::*;

fn plan(per_minute: Option<u64>, per_day: Option<u64>, per_month: Option<u64>) -> Plan {
    Plan {
        limits: BTreeMap::from([(
            "p".to_string(),
            Limits {
                per_minute,
                per_day,
                per_month,
            },
        )]),
    }
}

fn quota() -> (tempfile::TempDir, Quota) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = sled::Config::new()
        .path(dir.path())
        .open()
        .unwrap_or_else(|e| panic!("{e}"));
    let q = Quota::open(&db).unwrap_or_else(|e| panic!("{e}"));
    (dir, q)
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[test]
fn minute_window_rolls_over_and_reports_retry_after() {
    let (_d, q) = quota();
    let p = plan(Some(2), None, None);
    let t = at("2026-11-23T10:15:20Z");
    assert_eq!(
        q.meter_at("a", &p, "p", t).ok().flatten().map(|i| i.remaining),
        Some(1)
    );
    assert_eq!(
        q.meter_at("a", &p, "p", t).ok().flatten().map(|i| i.remaining),
        Some(0)
    );
    let err = q.meter_at("a", &p, "p", t).err();
    assert_eq!(
        err.as_ref().map(|(e, _)| (e.code.as_str(), e.retry_after)),
        Some(("quota_exceeded", Some(40)))
    );
    // Next minute: fresh.
    assert!(q.meter_at("a", &p, "p", at("2026-11-23T10:16:00Z")).is_ok());
    // Another agency or purpose is counted apart.
    assert!(q.meter_at("b", &p, "p", t).is_ok());
}

#[test]
fn day_and_month_follow_the_vietnamese_calendar() {
    let (_d, q) = quota();
    let p = plan(None, Some(1), Some(2));
    // 16:59 UTC on the 30th is 23:59 in Hà Nội; 17:00 UTC is already the 1st of December there.
    assert!(q.meter_at("a", &p, "p", at("2026-11-30T16:59:00Z")).is_ok());
    let err = q.meter_at("a", &p, "p", at("2026-11-30T16:59:30Z")).err();
    assert_eq!(err.map(|(e, _)| e.retry_after), Some(Some(30)));
    assert!(
        q.meter_at("a", &p, "p", at("2026-11-30T17:00:00Z")).is_ok(),
        "new day and new month in Vietnam"
    );
    assert_eq!(month_of(at("2026-11-30T17:00:00Z")), "2026-12");
    assert!(q.meter_at("a", &p, "p", at("2026-12-02T03:00:00Z")).is_ok());
    let err = q.meter_at("a", &p, "p", at("2026-12-03T03:00:00Z")).err();
    assert_eq!(err.map(|(e, _)| e.message.contains("month")), Some(true));
}

#[test]
fn refused_calls_are_not_counted_against_the_window() {
    let (_d, q) = quota();
    let p = plan(Some(1), Some(5), None);
    let t = at("2026-11-23T10:15:00Z");
    assert!(q.meter_at("a", &p, "p", t).is_ok());
    for _ in 0..10 {
        assert!(q.meter_at("a", &p, "p", t).is_err());
    }
    let key = use_key("a", "p", Window::Day, "2026-11-23");
    assert_eq!(q.inner.state().value(&q.inner.tree, &key).ok(), Some(1));
}

#[test]
fn counters_reach_sled_behind_the_requests_and_when_dropped() {
    let (_d, q) = quota();
    let p = plan(None, Some(100), None);
    let t = at("2026-11-23T10:15:00Z");
    let key = use_key("a", "p", Window::Day, "2026-11-23");
    let in_sled = |tree: &sled::Tree| {
        tree.get(key.as_bytes())
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
    };
    let tree = q.inner.tree.clone();
    assert!(q.meter_at("a", &p, "p", t).is_ok());
    // Written by the persister thread within an interval or two.
    let deadline = std::time::Instant::now() + PERSIST_EVERY * 50;
    while in_sled(&tree) != Some(1) && std::time::Instant::now() < deadline {
        std::thread::sleep(PERSIST_EVERY / 4);
    }
    assert_eq!(in_sled(&tree), Some(1));
    for _ in 0..4 {
        assert!(q.meter_at("a", &p, "p", t).is_ok());
    }
    drop(q);
    assert_eq!(
        in_sled(&tree),
        Some(5),
        "closing writes what the thread had not yet"
    );
}

#[test]
fn month_ranges_and_plans() {
    let (start, end) = month_range("2026-11").unwrap_or_default();
    assert_eq!(start, at("2026-10-31T17:00:00Z"));
    assert_eq!(end, at("2026-11-30T17:00:00Z"));
    assert!(month_range("2026-13").is_err());
    assert!(month_range("2026-1").is_err());
    let plan =
        Plan::from_json(&serde_json::json!({ "limits": { "*": { "per_day": 10 } } })).unwrap_or_default();
    assert_eq!(plan.for_purpose("x").per_day, Some(10));
    assert!(Plan::from_json(&serde_json::json!({ "limits": { "*": { "per_week": 1 } } })).is_err());
    assert_eq!(
        Plan::from_json(&serde_json::Value::Null).ok(),
        Some(Plan::default())
    );
}
