//! The population's promises, checked on generated records.
#![allow(clippy::unwrap_used)]
use std::collections::HashSet;

use chrono::{Datelike, Months};
use serde_json::json;
use unicode_normalization::UnicodeNormalization;

use super::health::VACCINES;
use super::*;
use crate::citizen_id::check_consistency;

fn date(v: &Value) -> NaiveDate {
    NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn subset(v: &Value, allowed: &[&str]) -> bool {
    keys(v).iter().all(|k| allowed.contains(k))
}

/// The record spec, checked by hand (the schema module is someone else's stage).
fn check_record(r: &Value) {
    assert!(subset(
        r,
        &[
            "citizen_id",
            "old_id_number",
            "full_name",
            "birth_date",
            "gender",
            "permanent_address",
            "current_address",
            "id_card_issue_date",
            "phone",
            "vaccinations",
            "test_results",
            "recoveries",
        ]
    ));
    let id = CitizenId::parse(r["citizen_id"].as_str().unwrap()).unwrap();
    let birth = date(&r["birth_date"]);
    let gender: Gender = serde_json::from_value(r["gender"].clone()).unwrap();
    check_consistency(&id, birth, gender).unwrap();
    assert!((1930..=2015).contains(&birth.year()));
    let name = r["full_name"].as_str().unwrap();
    assert_eq!(name.nfc().collect::<String>(), name);
    assert!((1..=100).contains(&name.chars().count()));
    if let Some(old) = r.get("old_id_number") {
        let old = old.as_str().unwrap();
        assert!(old.len() == 9 && old.bytes().all(|b| b.is_ascii_digit()));
    }
    for a in ["permanent_address", "current_address"] {
        if let Some(a) = r.get(a) {
            assert!(subset(
                a,
                &[
                    "detail",
                    "ward",
                    "district",
                    "province",
                    "admin_unit_code",
                    "country"
                ]
            ));
            assert!(!a["detail"].as_str().unwrap().is_empty());
            assert!(!a["province"].as_str().unwrap().is_empty());
        }
    }
    if let Some(d) = r.get("id_card_issue_date") {
        assert!(
            date(d) >= birth.checked_add_months(Months::new(168)).unwrap(),
            "{r}"
        );
    }
    if let Some(p) = r.get("phone") {
        let p = p.as_str().unwrap();
        assert!(p.len() == 12 && p.starts_with("+84") && p[3..].bytes().all(|b| b.is_ascii_digit()));
    }
    for v in r["vaccinations"].as_array().unwrap() {
        assert!(subset(
            v,
            &[
                "dose_number",
                "vaccine_code",
                "vaccine_name",
                "date",
                "lot",
                "site",
                "source_record_id"
            ]
        ));
        assert!((1..=10).contains(&v["dose_number"].as_u64().unwrap()));
        assert!(VACCINES
            .iter()
            .any(|(c, n, _)| v["vaccine_code"] == *c && v["vaccine_name"] == *n));
        assert_eq!(date(&v["date"]).year(), 2021);
        assert!((1..=64).contains(&v["lot"].as_str().unwrap().len()));
    }
    for t in r["test_results"].as_array().unwrap() {
        assert!(subset(t, &["date", "kind", "result", "source_record_id"]));
        chrono::DateTime::parse_from_rfc3339(t["date"].as_str().unwrap()).unwrap();
        assert!(t["kind"] == "pcr" || t["kind"] == "rapid_antigen");
        assert!(t["result"] == "negative" || t["result"] == "positive");
    }
    for c in r["recoveries"].as_array().unwrap() {
        assert!(subset(c, &["recovered_on", "source_record_id"]));
        date(&c["recovered_on"]);
    }
}

fn source_ids(r: &Value) -> Vec<String> {
    ["vaccinations", "test_results", "recoveries"]
        .iter()
        .flat_map(|k| r[*k].as_array().unwrap().iter())
        .map(|e| e["source_record_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn first_three_are_the_samples_for_any_seed() {
    for seed in [0, 1, 42, u64::MAX] {
        let head: Vec<Value> = generate(3, seed).collect();
        let ids: Vec<&str> = head.iter().map(|r| r["citizen_id"].as_str().unwrap()).collect();
        assert_eq!(ids, SAMPLE_CITIZENS);
        assert_eq!(head[0]["full_name"], "Nguyễn Văn An");
        assert_eq!(head[0]["vaccinations"].as_array().unwrap().len(), 2);
        assert_eq!(head[1]["full_name"], "Trần Thị Bình");
        assert_eq!(head[1]["gender"], "female");
        assert_eq!(head[1]["vaccinations"].as_array().unwrap().len(), 1);
        assert_eq!(head[2]["full_name"], "Lê Minh Châu");
        assert_eq!(head[2]["vaccinations"].as_array().unwrap().len(), 0);
        assert_eq!(head[2]["test_results"][0]["result"], "negative");
        for r in &head {
            check_record(r);
        }
    }
    assert_eq!(generate(0, 1).count(), 0);
    assert_eq!(generate(2, 1).count(), 2);
}

#[test]
fn sample_qr_payload() {
    let binh = generate(2, 0).nth(1).unwrap();
    assert_eq!(
        qr_payload(&binh).unwrap(),
        "079195000002|025123456|Trần Thị Bình|14031995|Nữ|12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh|10042021"
    );
    assert_eq!(qr_payload(&json!({})), None);
    assert_eq!(qr_payload(&json!("079195000002")), None);
}

#[test]
fn twenty_thousand_valid_unique_and_qr_consistent() {
    let records: Vec<Value> = generate(20_000, 2021).collect();
    assert_eq!(records.len(), 20_000);
    let mut ids = HashSet::new();
    let mut phones = HashSet::new();
    let mut sources = HashSet::new();
    let (mut vaccinated, mut with_card, mut tested, mut recovered, mut phoned) = (0, 0, 0, 0, 0);
    for r in &records {
        check_record(r);
        assert!(
            ids.insert(r["citizen_id"].as_str().unwrap().to_owned()),
            "duplicate ID {}",
            r["citizen_id"]
        );
        if let Some(p) = r.get("phone") {
            phoned += 1;
            assert!(
                phones.insert(p.as_str().unwrap().to_owned()),
                "duplicate phone {p}"
            );
        }
        for s in source_ids(r) {
            assert!(sources.insert(s.clone()), "duplicate source_record_id {s}");
        }
        vaccinated += usize::from(!r["vaccinations"].as_array().unwrap().is_empty());
        tested += usize::from(!r["test_results"].as_array().unwrap().is_empty());
        recovered += usize::from(!r["recoveries"].as_array().unwrap().is_empty());

        match qr_payload(r) {
            None => assert!(r.get("id_card_issue_date").is_none()),
            Some(p) => {
                with_card += 1;
                let q = qr::parse(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
                assert_eq!(q.citizen_id.as_str(), r["citizen_id"]);
                assert_eq!(
                    q.old_id_number.as_deref(),
                    r.get("old_id_number").and_then(Value::as_str)
                );
                assert!(qr::names_match(&q.full_name, r["full_name"].as_str().unwrap()));
                assert_eq!(q.birth_date, date(&r["birth_date"]));
                assert_eq!(q.gender.as_str(), r["gender"]);
                assert_eq!(q.issue_date, date(&r["id_card_issue_date"]));
                let a = &r["permanent_address"];
                assert!(q.permanent_address.starts_with(a["detail"].as_str().unwrap()));
                assert!(q.permanent_address.ends_with(a["province"].as_str().unwrap()));
            }
        }
    }
    let pct = |n: usize| n * 100 / records.len();
    assert!(
        (65..=75).contains(&pct(vaccinated)),
        "vaccinated {}%",
        pct(vaccinated)
    );
    assert!(pct(with_card) >= 80, "with card {}%", pct(with_card));
    assert!(pct(phoned) >= 90, "with phone {}%", pct(phoned));
    assert!((5..=20).contains(&pct(tested)), "tested {}%", pct(tested));
    assert!(recovered > 0);
}

#[test]
fn deterministic_per_seed() {
    let a: Vec<Value> = generate(2_000, 7).collect();
    let b: Vec<Value> = generate(2_000, 7).collect();
    assert_eq!(a, b);
    let c: Vec<Value> = generate(2_000, 8).collect();
    assert_eq!(a[..3], c[..3]);
    assert_ne!(a[3..], c[3..]);
    // A shorter run is a prefix of a longer one.
    let short: Vec<Value> = generate(500, 7).collect();
    assert_eq!(short[..], a[..500]);
}
