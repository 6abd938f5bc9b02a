//! Stage: demo and benchmark data. A synthetic, deterministic population of canonical citizen records:
//! the same `(count, seed)` always yields the same records. Every person is invented; any resemblance to
//! a real citizen is chance.
//!
//! What holds for every record:
//! - the ID is valid ([`CitizenId::parse`]), unique, and consistent with the birth date (1930–2015) and
//!   gender; serials are unique per (province, century/gender digit, birth year), scrambled so they look
//!   real;
//! - names are Vietnamese with diacritics (NFC), middle names fit the gender;
//! - addresses use real province, district and ward names with synthetic house numbers (no
//!   `admin_unit_code`: the generator does not invent official codes);
//! - phones `+849xxxxxxxx` are unique (everyone born 2010 or earlier has one); children too young for
//!   a card have no `id_card_issue_date`, which is always on or after the 14th birthday (and in
//!   2016–mid 2024);
//! - about 70% have 1–3 vaccinations dated 2021, some have test results (2021–2022) and recoveries;
//!   every `source_record_id` is unique (`moh-imm-<id>-<n>`, `moh-lab-<id>-<n>`, `moh-f0-<id>-<n>`).
//!
//! The first three records never depend on the seed; they are the documented [`SAMPLE_CITIZENS`]:
//!
//! | ID | name | born | province | history |
//! |---|---|---|---|---|
//! | `001090000001` | Nguyễn Văn An | 1990-05-20, male | Hà Nội | 2 doses (Jul/Oct 2021) |
//! | `079195000002` | Trần Thị Bình | 1995-03-14, female | Hồ Chí Minh | 1 dose (Aug 2021) |
//! | `048203000003` | Lê Minh Châu | 2003-11-02, male | Đà Nẵng | no vaccination, 1 negative PCR (Oct 2021) |
//!
//! The rooms: `names` (family, middle and given names), `places` (provinces, districts, wards, streets),
//! `health` (vaccinations, tests, recoveries), `samples` (the three hand-picked records), `generator`
//! (unique IDs and phones, one record at a time), `draw` (weighted picks and dates the tables share).

use chrono::NaiveDate;
use serde_json::Value;

use crate::citizen_id::{CitizenId, Gender};
use crate::qr::{self, CccdQr};

mod draw;
mod generator;
mod health;
mod names;
mod places;
mod samples;
#[cfg(test)]
mod tests;

use generator::{phone, Generator};

/// The first three generated IDs, the same for every seed (see the module docs for who they are).
pub const SAMPLE_CITIZENS: [&str; 3] = ["001090000001", "079195000002", "048203000003"];

/// `count` records, deterministic in `seed`. Stops early only past ~10¹⁰ records, when no unique ID is
/// left.
pub fn generate(count: usize, seed: u64) -> impl Iterator<Item = Value> {
    let mut g = Generator::new(seed);
    (0..count).map_while(move |i| g.record(i))
}

/// The CCCD QR payload (7-field form) the record's ID card would carry; `None` when the record has no
/// card (`id_card_issue_date` absent) or lacks a field the QR needs.
pub fn qr_payload(record: &Value) -> Option<String> {
    let text = |k: &str| record.get(k).and_then(Value::as_str);
    let date = |k: &str| text(k).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
    let gender = match text("gender")? {
        "male" => Gender::Male,
        "female" => Gender::Female,
        _ => return None,
    };
    let addr = record.get("permanent_address")?;
    let permanent_address = ["detail", "ward", "district", "province"]
        .iter()
        .filter_map(|k| addr.get(*k).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    let qr = CccdQr {
        citizen_id: CitizenId::parse(text("citizen_id")?).ok()?,
        old_id_number: text("old_id_number").map(str::to_owned),
        full_name: text("full_name")?.to_owned(),
        birth_date: date("birth_date")?,
        gender,
        permanent_address,
        issue_date: date("id_card_issue_date")?,
    };
    Some(qr::encode(&qr))
}

/// The phone number on the record of `SAMPLE_CITIZENS[i]` (`+84931415926` for `001090000001`): the SMS
/// examples in the demo banner and the README use it.
pub fn sample_phone(i: usize) -> Option<String> {
    phone(i)
}
