//! The generator: one record at a time from a seeded RNG, with unique citizen IDs (per-bucket serial
//! counters, scrambled) and unique phones.

use chrono::{Days, Months, NaiveDate};
use serde_json::{Map, Value};

use super::draw::{iso, ymd};
use super::health::{tests_and_recoveries, vaccinations};
use super::names::full_name;
use super::places::address;
use super::samples::fixed_record;
use super::SAMPLE_CITIZENS;
use crate::citizen_id::{provinces, CitizenId, Gender};

const FIRST_BIRTH_YEAR: i32 = 1930;
const LAST_BIRTH_YEAR: i32 = 2015;
const YEARS: usize = (LAST_BIRTH_YEAR - FIRST_BIRTH_YEAR + 1) as usize;
/// Serials run over 1..=999_999.
const SERIALS: u32 = 999_999;
/// Multiplier of the serial scramble; coprime with 999,999 = 3³·7·11·13·37, so `c ↦ c·M + k mod 999,999`
/// is a bijection and distinct counters give distinct serials.
const SERIAL_MULTIPLIER: u64 = 618_034;
/// Phone numbers `+849` + 8 digits: `i ↦ i·M + k mod 10⁸` is a bijection for M coprime with 10.
const PHONE_SPACE: u64 = 100_000_000;
const PHONE_MULTIPLIER: u64 = 48_271_393;
const PHONE_OFFSET: u64 = 31_415_926;

pub(super) fn phone(index: usize) -> Option<String> {
    let i = u64::try_from(index).ok().filter(|i| *i < PHONE_SPACE)?;
    Some(format!(
        "+849{:08}",
        (i * PHONE_MULTIPLIER + PHONE_OFFSET) % PHONE_SPACE
    ))
}

/// Keeps per-(province, century/gender digit, birth year) counters so every ID is unique.
pub(super) struct Generator {
    rng: fastrand::Rng,
    /// Next serial counter per bucket, indexed `(province * 4 + g) * YEARS + year offset`.
    counters: Vec<u32>,
    /// Province indices of Hà Nội and Hồ Chí Minh, drawn more often.
    big: [usize; 2],
}

impl Generator {
    pub(super) fn new(seed: u64) -> Self {
        let idx = |code: &str| provinces().iter().position(|(c, _)| *c == code).unwrap_or(0);
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            counters: vec![0; provinces().len() * 4 * YEARS],
            big: [idx("001"), idx("079")],
        }
    }

    /// A fresh ID for this province, birth year and gender; another province if the bucket is full.
    fn next_id(&mut self, province: usize, year: i32, gender: Gender) -> Option<CitizenId> {
        let g = 2 * ((year - 1900) / 100) + i32::from(gender == Gender::Female);
        let year_off = usize::try_from(year - FIRST_BIRTH_YEAR).ok()?;
        let n = provinces().len();
        for p in (0..n).map(|k| (province + k) % n) {
            let bucket = (p * 4 + usize::try_from(g).ok()?) * YEARS + year_off;
            // The offset differs per bucket so equal counters do not give equal serials everywhere.
            let offset = (bucket as u64).wrapping_mul(0x9E37_79B9) % u64::from(SERIALS);
            while self.counters[bucket] < SERIALS {
                let c = u64::from(self.counters[bucket]);
                self.counters[bucket] += 1;
                let serial = (c * SERIAL_MULTIPLIER + offset) % u64::from(SERIALS) + 1;
                let id = format!("{}{g}{:02}{serial:06}", provinces()[p].0, year % 100);
                if !SAMPLE_CITIZENS.contains(&id.as_str()) {
                    return CitizenId::parse(&id).ok();
                }
            }
        }
        None
    }

    pub(super) fn record(&mut self, index: usize) -> Option<Value> {
        if let Some(r) = fixed_record(index) {
            return Some(r);
        }
        let rng = &mut self.rng;
        let province = match rng.u8(..10) {
            0 | 1 => self.big[0],
            2 | 3 => self.big[1],
            _ => rng.usize(..provinces().len()),
        };
        let year = rng.i32(FIRST_BIRTH_YEAR..=LAST_BIRTH_YEAR);
        let birth = ymd(year, 1, 1) + Days::new(rng.u64(0..365));
        let gender = if rng.bool() { Gender::Female } else { Gender::Male };
        let full_name = full_name(rng, gender);
        let permanent = address(rng, province);
        let current = (rng.u8(..10) < 3).then(|| {
            let p = if rng.bool() {
                province
            } else {
                self.big[rng.usize(..2)]
            };
            address(rng, p)
        });
        let issue = issue_date(rng, birth);
        let old_id = (issue.is_some() && year <= 2001 && rng.u8(..10) < 6)
            .then(|| format!("{:09}", rng.u32(10_000_000..400_000_000)));

        let id = self.next_id(province, year, gender)?;
        let rng = &mut self.rng;
        let site_ward = current.as_ref().unwrap_or(&permanent)["ward"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let vaccinations = if year <= 2009 && rng.u8(..100) < 75 {
            vaccinations(rng, &id, &site_ward)
        } else {
            vec![]
        };
        let (test_results, recoveries) = if rng.u8(..100) < 12 {
            tests_and_recoveries(rng, &id)
        } else {
            (vec![], vec![])
        };

        let mut r = Map::new();
        r.insert("citizen_id".into(), id.as_str().into());
        if let Some(old) = old_id {
            r.insert("old_id_number".into(), old.into());
        }
        r.insert("full_name".into(), full_name.into());
        r.insert("birth_date".into(), iso(birth).into());
        r.insert("gender".into(), gender.as_str().into());
        r.insert("permanent_address".into(), permanent);
        if let Some(c) = current {
            r.insert("current_address".into(), c);
        }
        if let Some(d) = issue {
            r.insert("id_card_issue_date".into(), iso(d).into());
        }
        if year <= 2010 {
            if let Some(p) = phone(index) {
                r.insert("phone".into(), p.into());
            }
        }
        r.insert("vaccinations".into(), Value::Array(vaccinations));
        r.insert("test_results".into(), Value::Array(test_results));
        r.insert("recoveries".into(), Value::Array(recoveries));
        Some(Value::Object(r))
    }
}

/// A card issued on or after the 14th birthday, between 2016 (the first 12-digit cards) and mid 2024;
/// none for someone not yet 14 by then.
fn issue_date(rng: &mut fastrand::Rng, birth: NaiveDate) -> Option<NaiveDate> {
    let from = birth
        .checked_add_months(Months::new(14 * 12))?
        .max(ymd(2016, 1, 1));
    let until = ymd(2024, 6, 30);
    let span = u64::try_from((until - from).num_days()).ok()?;
    Some(from + Days::new(rng.u64(0..=span)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn scrambles_are_bijections() {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        assert_eq!(gcd(SERIAL_MULTIPLIER, u64::from(SERIALS)), 1);
        assert_eq!(gcd(PHONE_MULTIPLIER, PHONE_SPACE), 1);
        assert_eq!(phone(usize::try_from(PHONE_SPACE).unwrap()), None);
    }

    #[test]
    fn one_bucket_yields_distinct_serials_then_moves_on() {
        let mut g = Generator::new(0);
        let mut seen = HashSet::new();
        let hn = g.big[0];
        // Fill most of one bucket: every serial distinct, never a sample ID.
        for _ in 0..50_000 {
            let id = g.next_id(hn, 1990, Gender::Male).unwrap();
            assert_eq!(id.province_code(), "001");
            assert_ne!(id.as_str(), SAMPLE_CITIZENS[0]);
            assert!(seen.insert(id));
        }
        // An exhausted bucket spills into the next province.
        let year_off = usize::try_from(1990 - FIRST_BIRTH_YEAR).unwrap();
        g.counters[hn * 4 * YEARS + year_off] = SERIALS;
        let id = g.next_id(hn, 1990, Gender::Male).unwrap();
        assert_eq!(id.province_code(), provinces()[hn + 1].0);
        assert_eq!((id.birth_year(), id.gender()), (1990, Gender::Male));
    }
}
