//! Unit tests of [`super`].

#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn schema() -> CitizenSchema {
    CitizenSchema::load(None).unwrap()
}

fn catalogue() -> Catalogue {
    Catalogue::load(None, &schema()).unwrap()
}

fn fp(s: &str) -> FieldPath {
    s.parse().unwrap()
}

/// A synthetic citizen (not a real person), with derived fields added.
fn sample() -> Value {
    json!({
        "citizen_id": "079195000002",
        "full_name": "Trần Thị Bình",
        "birth_date": "1995-03-14",
        "gender": "female",
        "permanent_address": { "detail": "12 Lê Lợi", "province": "Thành phố Hồ Chí Minh", "country": "VN" },
        "phone": "+84912345678",
        "vaccinations": [
            { "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2021-08-01",
              "lot": "FF1234", "source_record_id": "moh-imm-1" },
            { "dose_number": 2, "vaccine_code": "208", "vaccine_name": "Comirnaty", "date": "2021-08-29",
              "source_record_id": "moh-imm-2" }
        ],
        "test_results": [],
        "covid_status": "fully_vaccinated"
    })
}

/// A valid one-purpose catalogue with `body` spliced in; the purpose id is on line 2.
fn one(body: &str) -> String {
    format!(
        "[[purpose]]\nid = \"p\"\ntitle_vi = \"Thử\"\ntitle_en = \"Test\"\nlegal_basis = \"none\"\nprice_vnd = 0\n{body}"
    )
}

fn invalid(text: &str) -> (usize, String) {
    match Catalogue::from_str(text, "purposes.toml", &schema()).unwrap_err() {
        CatalogueError::Invalid {
            origin,
            line,
            message,
        } => {
            assert_eq!(origin, "purposes.toml");
            let shown = format!("{origin}:{line}: {message}");
            assert!(shown.starts_with(&format!("purposes.toml:{line}: ")));
            (line, message)
        }
        other => panic!("{other}"),
    }
}

#[test]
fn field_paths_parse_and_cover() {
    assert_eq!(fp("vaccinations[].date").to_string(), "vaccinations[].date");
    for bad in [
        "", ".", "a.", ".a", "a..b", "[]", "a[", "a[]b", "a b", "a-b", "a.[]", "ä",
    ] {
        assert!(bad.parse::<FieldPath>().is_err(), "{bad:?}");
    }
    assert!(fp("vaccinations").covers(&fp("vaccinations[].date")));
    assert!(fp("vaccinations").covers(&fp("vaccinations")));
    assert!(fp("permanent_address").covers(&fp("permanent_address.province")));
    assert!(!fp("permanent_address.province").covers(&fp("permanent_address")));
    assert!(!fp("full").covers(&fp("full_name")));
    assert!(!fp("vaccinations[].date").covers(&fp("vaccinations[].dose_number")));
    assert!(!fp("current_address").covers(&fp("permanent_address.province")));
}

#[test]
fn embedded_catalogue_loads() {
    let c = catalogue();
    let ids: Vec<&str> = c.all().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "vaccination-sync",
            "covid-qr-status",
            "public-service-prefill",
            "citizen-self-service",
            "test-result-sync",
            "recovery-sync",
            "citizen-self-sms",
            "checkpoint-checkin",
            "contact-tracing",
            "covid-certificate"
        ]
    );
    let sync = c.get("vaccination-sync").unwrap();
    assert!(sync.may_write("vaccinations"));
    assert!(sync.may_write("vaccinations[].date"));
    assert!(!sync.may_write("full_name"));
    assert!(!sync.may_write("covid_status"));
    assert!(!sync.may_write("not a path"));
    assert_eq!(c.for_agency("dvc").len(), 2);
    assert!(c.for_agency("nobody").is_empty());
    let qr = c.get("covid-qr-status").unwrap();
    assert_eq!(qr.read, [fp("citizen_id"), fp("full_name"), fp("covid_status")]);
    assert!(qr.price_vnd > 0);
    for p in c.all() {
        assert!(!p.title_vi.is_ascii(), "{}: Vietnamese title", p.id);
    }
}

#[test]
fn prefill_never_reads_health_data_or_phone() {
    let c = catalogue();
    let prefill = c.get("public-service-prefill").unwrap();
    for secret in [
        "phone",
        "vaccinations[].date",
        "test_results",
        "recoveries",
        "covid_status",
    ] {
        assert!(!prefill.read.iter().any(|r| r.covers(&fp(secret))), "{secret}");
    }
    let (out, released) = Purpose::project(&sample(), &prefill.read);
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "citizen_id",
            "full_name",
            "birth_date",
            "gender",
            "permanent_address"
        ]
    );
    assert_eq!(
        released,
        [
            "birth_date",
            "citizen_id",
            "full_name",
            "gender",
            "permanent_address"
        ]
    );
}

#[test]
fn authorize_denies_by_default() {
    let c = catalogue();
    assert_eq!(
        c.authorize("covid-qr-status", "pccovid").unwrap().id,
        "covid-qr-status"
    );
    let e = c.authorize("covid-qr-status", "moh").unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (403, "purpose_not_allowed"));
    let e = c.authorize("marketing", "pccovid").unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "unknown_purpose"));
    assert!(e.message.contains("marketing"));
    assert_eq!(
        did_you_mean("fullname", ["full_name", "birth_date"].into_iter()),
        "; did you mean `full_name`?"
    );
    assert_eq!(
        did_you_mean("salary", ["full_name", "birth_date"].into_iter()),
        ""
    );
    let e = c.authorize("covid-qr-stauts", "pccovid").unwrap_err();
    assert!(
        e.message.ends_with("did you mean `covid-qr-status`?"),
        "{}",
        e.message
    );
}

#[test]
fn release_set_intersects_and_refuses() {
    let (s, c) = (schema(), catalogue());
    let prefill = c.get("public-service-prefill").unwrap();
    assert_eq!(prefill.release_set(None, &s).unwrap(), prefill.read);
    let req = [
        "full_name".to_string(),
        "permanent_address.province".into(),
        "full_name".into(),
    ];
    assert_eq!(
        prefill.release_set(Some(&req), &s).unwrap(),
        [fp("full_name"), fp("permanent_address.province")]
    );
    assert!(prefill.release_set(Some(&[]), &s).unwrap().is_empty());

    let e = prefill.release_set(Some(&["phone".into()]), &s).unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (403, "forbidden_field"));
    assert!(e.message.contains("phone"));
    let e = prefill.release_set(Some(&["shoe_size".into()]), &s).unwrap_err();
    assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "unknown_field"));
    assert!(e.message.contains("shoe_size"));
    let e = prefill.release_set(Some(&["full_name[".into()]), &s).unwrap_err();
    assert_eq!(e.code, "unknown_field");

    // A narrower read set does not release its parent.
    let sync = c.get("vaccination-sync").unwrap();
    let e = sync.release_set(Some(&["vaccinations".into()]), &s).unwrap_err();
    assert_eq!(e.code, "forbidden_field");
}

#[test]
fn project_releases_only_the_fields() {
    let r = sample();
    let fields = [
        fp("vaccinations[].lot"),
        fp("permanent_address.province"),
        fp("current_address"),
    ];
    let (out, released) = Purpose::project(&r, &fields);
    assert_eq!(
        out,
        json!({ "permanent_address": { "province": "Thành phố Hồ Chí Minh" },
                "vaccinations": [{ "lot": "FF1234" }] })
    );
    assert_eq!(released, ["permanent_address.province", "vaccinations[].lot"]);

    let (out, released) =
        Purpose::project(&r, &[fp("vaccinations[].date"), fp("vaccinations[].dose_number")]);
    assert_eq!(
        out,
        json!({ "vaccinations": [{ "dose_number": 1, "date": "2021-08-01" },
                                 { "dose_number": 2, "date": "2021-08-29" }] })
    );
    assert_eq!(released, ["vaccinations[].date", "vaccinations[].dose_number"]);

    // Whole arrays stay whole, even empty ones.
    let (out, released) = Purpose::project(&r, &[fp("test_results"), fp("covid_status")]);
    assert_eq!(
        out,
        json!({ "test_results": [], "covid_status": "fully_vaccinated" })
    );
    assert_eq!(released, ["covid_status", "test_results"]);

    assert_eq!(Purpose::project(&r, &[]), (json!({}), vec![]));
    assert_eq!(
        Purpose::project(&json!("x"), &[fp("full_name")]),
        (json!({}), vec![])
    );
}

#[test]
fn catalogue_errors_name_file_and_line() {
    // Unknown field path under read (line 7).
    let (line, msg) = invalid(&one(
        "read = [\"full_name\",\n  \"shoe_size\"]\nagencies = [\"x\"]\n",
    ));
    assert_eq!(line, 8, "{msg}");
    assert!(msg.contains("shoe_size") && msg.contains("read"), "{msg}");
    // Unknown nested path and malformed path.
    let (line, msg) = invalid(&one("read = [\"permanent_address.zip\"]\nagencies = [\"x\"]\n"));
    assert_eq!((line, msg.contains("permanent_address.zip")), (7, true));
    let (line, _) = invalid(&one(
        "read = [\"full_name\"]\nwrite = [\"vaccinations[]\"]\nagencies = [\"x\"]\n",
    ));
    assert_eq!(line, 8);
    // Derived field under write.
    let (line, msg) = invalid(&one(
        "read = [\"full_name\"]\nwrite = [\"covid_status\"]\nagencies = [\"x\"]\n",
    ));
    assert_eq!(line, 8, "{msg}");
    assert!(msg.contains("covid_status"), "{msg}");
    // Neither read nor write.
    let (line, msg) = invalid(&one("read = []\nagencies = [\"x\"]\n"));
    assert_eq!(line, 2, "{msg}");
    assert!(msg.contains("neither read nor write"));
    // No agencies, missing or empty.
    let (line, msg) = invalid(&one("read = [\"full_name\"]\n"));
    assert_eq!(line, 2, "{msg}");
    assert!(msg.contains("no agencies"));
    assert_eq!(invalid(&one("read = [\"full_name\"]\nagencies = []\n")).0, 2);
    // Unknown key.
    let (line, msg) = invalid(&one(
        "read = [\"full_name\"]\nagencies = [\"x\"]\nprice_usd = 1\n",
    ));
    assert_eq!(line, 9, "{msg}");
    assert!(msg.contains("price_usd"), "{msg}");
    let (line, msg) = invalid(&format!(
        "version = 2\n{}",
        one("read = [\"full_name\"]\nagencies = [\"x\"]\n")
    ));
    assert_eq!(line, 1, "{msg}");
    assert!(msg.contains("version"), "{msg}");
    // Duplicate id: reported on the second, naming the first.
    let p = one("read = [\"full_name\"]\nagencies = [\"x\"]\n");
    let (line, msg) = invalid(&format!("{p}\n{p}"));
    assert_eq!(line, 11, "{msg}");
    assert!(msg.contains("duplicate") && msg.contains("line 2"), "{msg}");
    // Bad id, empty title, bad types, syntax.
    let (line, _) = invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("\"p\"", "\"P Q\""));
    assert_eq!(line, 2);
    let (line, _) =
        invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("\"Test\"", "\" \""));
    assert_eq!(line, 4);
    let (line, _) = invalid(&one("read = [\"full_name\"]\nagencies = [\"x\"]\n").replace("= 0", "= -1"));
    assert_eq!(line, 6);
    let (line, _) = invalid(&one("read = [\"full_name\"\nagencies = [\"x\"]\n"));
    assert!(line >= 7);
    assert_eq!(invalid("# nothing\n").0, 1);
}

#[test]
fn load_reads_files() {
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("purposes.toml");
    std::fs::write(&path, one("read = [\"full_name\"]\nagencies = [\"x\"]\n")).unwrap();
    let c = Catalogue::load(Some(&path), &s).unwrap();
    assert_eq!(c.all().len(), 1);
    std::fs::write(&path, one("read = [\"nope\"]\nagencies = [\"x\"]\n")).unwrap();
    let e = Catalogue::load(Some(&path), &s).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:7: ", path.display())), "{e}");
    let e = Catalogue::load(Some(&dir.path().join("missing.toml")), &s).unwrap_err();
    assert!(matches!(e, CatalogueError::Io { .. }));
}

/// Every leaf of `v` (scalars and empty containers) as a field path.
fn leaf_paths(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaf_paths(x, &p, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                leaf_paths(x, &format!("{path}[]"), out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

const KEYS: [&str; 6] = ["a", "b", "full_name", "vaccinations", "date", "permanent_address"];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

fn record() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(&KEYS[..]), json_value()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn field_path() -> impl Strategy<Value = FieldPath> {
    prop::collection::vec((prop::sample::select(&KEYS[..]), 0..3usize), 1..4).prop_map(|segs| {
        let text: Vec<String> = segs
            .iter()
            .map(|(k, n)| format!("{k}{}", "[]".repeat(*n)))
            .collect();
        fp(&text.join("."))
    })
}

proptest! {
    #[test]
    fn project_never_leaks(rec in record(), fields in prop::collection::vec(field_path(), 0..5)) {
        let (out, released) = Purpose::project(&rec, &fields);
        prop_assert!(out.is_object());
        let mut leaves = Vec::new();
        if out.as_object().is_some_and(|m| !m.is_empty()) {
            leaf_paths(&out, "", &mut leaves);
        }
        for leaf in &leaves {
            let leaf = fp(leaf);
            prop_assert!(fields.iter().any(|f| f.covers(&leaf)), "{} not covered by {:?}", leaf, fields);
        }
        let mut sorted = released.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&sorted, &released);
        for r in &released {
            prop_assert!(fields.iter().any(|f| f.as_str() == r));
        }
        // Something is released exactly when the projection is non-empty.
        prop_assert_eq!(released.is_empty(), leaves.is_empty());
    }

    #[test]
    fn project_canonical_subsets(mask in prop::collection::vec(any::<bool>(), 64)) {
        let s = schema();
        let fields: Vec<FieldPath> = s.field_paths().iter().zip(&mask).filter(|(_, m)| **m).map(|(p, _)| fp(p)).collect();
        let (out, _) = Purpose::project(&sample(), &fields);
        let mut leaves = Vec::new();
        if out.as_object().is_some_and(|m| !m.is_empty()) {
            leaf_paths(&out, "", &mut leaves);
        }
        for leaf in &leaves {
            let leaf = fp(leaf);
            prop_assert!(fields.iter().any(|f| f.covers(&leaf)), "{}", leaf);
        }
        // Top-level fields asked for whole come back unchanged.
        for f in &fields {
            if let Some(v) = sample().get(f.as_str()) {
                prop_assert_eq!(out.get(f.as_str()), Some(v));
            }
        }
    }
}
