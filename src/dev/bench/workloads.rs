//! What each scenario sends: a sample of the demo population and the `n`-th request of a scenario for it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use super::args::Kind;

/// The demo seed: the broker's `demo` seeds `population::generate(n, 2021)`.
const DEMO_SEED: u64 = 2021;

/// A synthetic citizen the load generator may name.
#[derive(Debug, Clone)]
pub struct Person {
    /// The 12-digit ID.
    pub id: String,
    /// Full name.
    pub name: String,
    /// Birth date `dd/mm/yyyy`.
    pub birth_dmy: String,
    /// The CCCD QR payload, when the person has a card.
    pub qr: Option<String>,
}

/// A spread of citizens over the whole population (every k-th of `population::generate(n, 2021)`).
pub struct Sample {
    people: Vec<Person>,
    with_qr: Vec<usize>,
}

impl Sample {
    /// Up to `max` people spread evenly over the first `citizens` of the demo population.
    pub fn build(citizens: usize, max: usize) -> Self {
        let step = citizens.div_ceil(max.max(1)).max(1);
        let mut people = Vec::new();
        for record in crate::dev::population::generate(citizens, DEMO_SEED).step_by(step) {
            let text = |k: &str| {
                record
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let birth = text("birth_date");
            let birth_dmy = chrono::NaiveDate::parse_from_str(&birth, "%Y-%m-%d")
                .map(|d| d.format("%d/%m/%Y").to_string())
                .unwrap_or_default();
            people.push(Person {
                id: text("citizen_id"),
                name: text("full_name"),
                birth_dmy,
                qr: crate::dev::population::qr_payload(&record),
            });
        }
        let with_qr = (0..people.len()).filter(|&i| people[i].qr.is_some()).collect();
        Self { people, with_qr }
    }

    /// How many people.
    pub fn len(&self) -> usize {
        self.people.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    fn pick(&self, n: u64) -> Option<&Person> {
        let len = self.people.len() as u64;
        (len > 0).then(|| &self.people[(spread(n) % len) as usize])
    }

    fn pick_with_qr(&self, n: u64) -> Option<&Person> {
        let len = self.with_qr.len() as u64;
        (len > 0).then(|| &self.people[self.with_qr[(spread(n) % len) as usize]])
    }
}

/// A cheap bijective scramble so that consecutive requests name unrelated citizens.
fn spread(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// Unique across the whole run: source ids of writes.
static WRITE_SEQ: AtomicU64 = AtomicU64::new(0);

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Content type of `body`.
    pub content_type: Option<&'static str>,
    /// Body.
    pub body: Bytes,
}

/// The top-level fields `public-service-prefill` releases: what a front broker asks its provider for.
const PREFILL_FIELDS: &str =
    "citizen_id,old_id_number,full_name,birth_date,gender,permanent_address,current_address,id_card_issue_date";

const DVC_TEMPLATE: &str = include_str!("../../../connectors/examples/dvc-tra-cuu.xml");
const FHIR_TEMPLATE: &str = include_str!("../../../connectors/examples/moh-immunization.json");

/// The `n`-th request of a scenario.
pub fn prepare(kind: Kind, sample: &Sample, n: u64, run_tag: &str) -> Option<PreparedRequest> {
    let get = |path: String| PreparedRequest {
        method: Method::GET,
        path,
        content_type: None,
        body: Bytes::new(),
    };
    let post = |path: &str, ct: &'static str, body: String| PreparedRequest {
        method: Method::POST,
        path: path.to_string(),
        content_type: Some(ct),
        body: Bytes::from(body),
    };
    Some(match kind {
        Kind::CanonicalRead => {
            let p = sample.pick(n)?;
            get(format!("/v1/citizens/{}?purpose=public-service-prefill", p.id))
        }
        Kind::ProviderRead => {
            let p = sample.pick(n)?;
            get(format!(
                "/v1/citizens/{}?purpose=population-proxy&fields={PREFILL_FIELDS}",
                p.id
            ))
        }
        Kind::PcCovidQr => {
            let p = sample.pick_with_qr(n)?;
            let body = json!({ "maYeuCau": format!("BENCH-{run_tag}-{n}"), "maQR": p.qr });
            post(
                "/connectors/pccovid/v1/qr-status",
                "application/json",
                body.to_string(),
            )
        }
        Kind::DvcSoap => {
            let p = sample.pick(n)?;
            let body = DVC_TEMPLATE
                .replace("001090000001", &p.id)
                .replace("Nguyễn Văn An", &p.name)
                .replace("20/05/1990", &p.birth_dmy)
                .replace("DVC-20261123-0000123", &format!("BENCH-{run_tag}-{n}"));
            post("/connectors/dvc/v1/TraCuuThongTinCongDan", "text/xml", body)
        }
        Kind::VaccinationWrite => {
            let p = sample.pick(n)?;
            let seq = WRITE_SEQ.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
                "date": "2021-08-01", "lot": "FK1234", "site": "Trạm Y tế (benchmark)",
                "source_record_id": format!("bench-{run_tag}-{seq}"),
            });
            post(
                &format!("/v1/citizens/{}/vaccinations?purpose=vaccination-sync", p.id),
                "application/json",
                body.to_string(),
            )
        }
        Kind::FhirWrite => {
            let p = sample.pick(n)?;
            let seq = WRITE_SEQ.fetch_add(1, Ordering::Relaxed);
            let mut doc: Value = serde_json::from_str(FHIR_TEMPLATE).ok()?;
            doc["id"] = json!(format!("bench-imm-{seq}"));
            doc["identifier"][0]["value"] = json!(format!("bench-fhir-{run_tag}-{seq}"));
            doc["patient"]["identifier"]["value"] = json!(p.id);
            doc["patient"]["display"] = json!(p.name);
            post(
                "/connectors/moh/v1/Immunization",
                "application/fhir+json",
                doc.to_string(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_name_sampled_citizens_and_writes_are_unique() {
        let sample = Sample::build(300, 50);
        assert!(sample.len() >= 50 && sample.len() <= 60, "{}", sample.len());
        let read = prepare(Kind::CanonicalRead, &sample, 3, "t").unwrap();
        assert!(read.path.starts_with("/v1/citizens/") && read.path.ends_with("public-service-prefill"));
        let soap = prepare(Kind::DvcSoap, &sample, 3, "t").unwrap();
        let text = String::from_utf8(soap.body.to_vec()).unwrap();
        assert!(!text.contains("001090000001") || read.path.contains("001090000001"));
        let qr = prepare(Kind::PcCovidQr, &sample, 3, "t").unwrap();
        let v: Value = serde_json::from_slice(&qr.body).unwrap();
        assert_eq!(v["maQR"].as_str().unwrap().split('|').count(), 7);
        let a = prepare(Kind::VaccinationWrite, &sample, 1, "t").unwrap();
        let b = prepare(Kind::VaccinationWrite, &sample, 1, "t").unwrap();
        assert_ne!(a.body, b.body, "every write has its own source id");
        let f = prepare(Kind::FhirWrite, &sample, 1, "t").unwrap();
        let v: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(v["resourceType"], "Immunization");
    }
}
