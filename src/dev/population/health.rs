//! Health history: COVID-19 vaccinations (2021), test results (2021–2022) and recoveries, every entry with
//! its own `source_record_id`.

use chrono::Days;
use serde_json::{json, Value};

use super::draw::{iso, pick_weighted, ymd};
use crate::citizen_id::CitizenId;

/// (CVX or local code, name, weight).
pub(super) const VACCINES: [(&str, &str, u32); 5] = [
    ("208", "Comirnaty (Pfizer-BioNTech)", 30),
    ("207", "Spikevax (Moderna)", 12),
    ("210", "Vaxzevria (AstraZeneca)", 25),
    ("510", "Sinopharm BIBP", 30),
    ("511", "CoronaVac (Sinovac)", 3),
];

pub(super) fn vaccinations(rng: &mut fastrand::Rng, id: &CitizenId, ward: &str) -> Vec<Value> {
    let doses = match rng.u8(..10) {
        0 | 1 => 1,
        2..=6 => 2,
        _ => 3,
    };
    let end_of_2021 = ymd(2021, 12, 31);
    // Vietnam's campaign began on 8 March 2021.
    let mut date = ymd(2021, 3, 8) + Days::new(rng.u64(0..240));
    let first = pick_weighted(rng, &[(0usize, 30), (1, 12), (2, 25), (3, 30), (4, 3)]);
    let mut out = Vec::with_capacity(doses);
    for dose in 1..=doses {
        if date > end_of_2021 {
            break;
        }
        // The booster is an mRNA vaccine; the first two doses match.
        let v = if dose == 3 { rng.usize(..2) } else { *first };
        let (code, name, _) = VACCINES[v];
        let lot = format!(
            "{}{}{:04}",
            char::from(b'A' + rng.u8(..26)),
            char::from(b'A' + rng.u8(..26)),
            rng.u16(..10_000)
        );
        out.push(json!({
            "dose_number": dose,
            "vaccine_code": code,
            "vaccine_name": name,
            "date": iso(date),
            "lot": lot,
            "site": format!("Trạm Y tế {ward}"),
            "source_record_id": format!("moh-imm-{id}-{dose}"),
        }));
        date = date + Days::new(rng.u64(28..=90));
    }
    out
}

pub(super) fn tests_and_recoveries(rng: &mut fastrand::Rng, id: &CitizenId) -> (Vec<Value>, Vec<Value>) {
    let mut tests = Vec::new();
    let mut recoveries = Vec::new();
    let start = ymd(2021, 6, 1);
    for n in 1..=rng.usize(1..=2) {
        let day = start + Days::new(rng.u64(0..300));
        let (h, m) = (rng.u8(6..20), rng.u8(..60));
        let positive = rng.u8(..100) < 15;
        tests.push(json!({
            "date": format!("{}T{h:02}:{m:02}:00Z", iso(day)),
            "kind": if rng.u8(..10) < 4 { "pcr" } else { "rapid_antigen" },
            "result": if positive { "positive" } else { "negative" },
            "source_record_id": format!("moh-lab-{id}-{n}"),
        }));
        if positive && rng.u8(..10) < 7 {
            let k = recoveries.len() + 1;
            recoveries.push(json!({
                "recovered_on": iso(day + Days::new(rng.u64(10..=21))),
                "source_record_id": format!("moh-f0-{id}-{k}"),
            }));
        }
    }
    (tests, recoveries)
}
