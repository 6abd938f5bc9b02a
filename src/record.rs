//! Stage: derived fields. What a record says beyond what was written to it: `covid_status`, computed at
//! read time from the vaccination, recovery and test history, never stored and never writable.
//!
//! Calendar dates in a record (`vaccinations[].date`, `recoveries[].recovered_on`) are Vietnamese civil
//! dates, so "today" is the date in Vietnam (UTC+07:00, no daylight saving), not the UTC date.
//! Entries whose dates do not parse are ignored: they cannot make a citizen look safer than they are.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Days after the latest dose before a citizen counts as fully vaccinated.
const FULL_AFTER_DAYS: i64 = 14;
/// Days a recovery counts for.
const RECOVERY_DAYS: i64 = 180;
/// Hours a negative test counts for.
const NEGATIVE_TEST_HOURS: i64 = 72;
/// Vietnam's offset from UTC, in seconds (Asia/Ho_Chi_Minh).
const VN_OFFSET_SECS: i32 = 7 * 3600;

/// A citizen's COVID-19 status, in order of precedence (the first that applies wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CovidStatus {
    /// 2+ vaccinations, the latest dated 14+ whole days before today.
    FullyVaccinated,
    /// A recovery with `recovered_on` at most 180 days before today.
    Recovered,
    /// 1+ vaccinations but not fully vaccinated.
    PartiallyVaccinated,
    /// A negative test sampled at most 72 hours before now.
    NegativeTest,
    /// None of the above.
    None,
}

impl CovidStatus {
    /// The wire form, as in the schema's enum: `fully_vaccinated`, …, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            CovidStatus::FullyVaccinated => "fully_vaccinated",
            CovidStatus::Recovered => "recovered",
            CovidStatus::PartiallyVaccinated => "partially_vaccinated",
            CovidStatus::NegativeTest => "negative_test",
            CovidStatus::None => "none",
        }
    }
}

impl std::fmt::Display for CovidStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Today's date in Vietnam at the instant `now`.
pub fn today_in_vietnam(now: DateTime<Utc>) -> NaiveDate {
    match FixedOffset::east_opt(VN_OFFSET_SECS) {
        Some(tz) => now.with_timezone(&tz).date_naive(),
        None => now.date_naive(), // unreachable: the offset is in range
    }
}

/// The stored fields `covid_status` is derived from.
pub const COVID_STATUS_INPUTS: [&str; 3] = ["vaccinations", "recoveries", "test_results"];

/// The citizen's status at `now`, by the rules above.
pub fn covid_status(record: &Value, now: DateTime<Utc>) -> CovidStatus {
    let today = today_in_vietnam(now);
    let doses: Vec<NaiveDate> = entries(record, "vaccinations")
        .filter_map(|v| date(v, "date"))
        .collect();
    if doses.len() >= 2 {
        if let Some(latest) = doses.iter().max() {
            if (today - *latest).num_days() >= FULL_AFTER_DAYS {
                return CovidStatus::FullyVaccinated;
            }
        }
    }
    // A recovery dated in the future is a data error, not a recovery.
    let recovered = entries(record, "recoveries")
        .filter_map(|r| date(r, "recovered_on"))
        .any(|d| (0..=RECOVERY_DAYS).contains(&(today - d).num_days()));
    if recovered {
        return CovidStatus::Recovered;
    }
    if !doses.is_empty() {
        return CovidStatus::PartiallyVaccinated;
    }
    let window = Duration::hours(NEGATIVE_TEST_HOURS);
    let negative = entries(record, "test_results")
        .filter(|t| t.get("result").and_then(Value::as_str) == Some("negative"))
        .filter_map(|t| t.get("date").and_then(Value::as_str))
        .filter_map(|s| DateTime::parse_from_rfc3339(s).ok())
        .any(|sampled| {
            let age = now.signed_duration_since(sampled);
            age >= Duration::zero() && age <= window
        });
    if negative {
        return CovidStatus::NegativeTest;
    }
    CovidStatus::None
}

/// Adds the derived fields (`covid_status`) to a record read from the store. Non-objects are left as they are.
pub fn with_derived(record: &mut Value, now: DateTime<Utc>) {
    let status = covid_status(record, now);
    if let Value::Object(map) = record {
        map.insert("covid_status".into(), Value::String(status.as_str().into()));
    }
}

fn entries<'a>(record: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    record.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn date(entry: &Value, key: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(entry.get(key)?.as_str()?, "%Y-%m-%d").ok()
}

/// A history list on the record that agencies append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// `vaccinations`.
    Vaccinations,
    /// `test_results`.
    TestResults,
    /// `recoveries`.
    Recoveries,
    /// `checkins`.
    CheckIns,
}

impl History {
    /// The record field holding the list.
    pub fn field(self) -> &'static str {
        match self {
            History::Vaccinations => "vaccinations",
            History::TestResults => "test_results",
            History::Recoveries => "recoveries",
            History::CheckIns => "checkins",
        }
    }

    /// The history held in the record field `field`.
    pub fn from_field(field: &str) -> Option<Self> {
        [
            History::Vaccinations,
            History::TestResults,
            History::Recoveries,
            History::CheckIns,
        ]
        .into_iter()
        .find(|h| h.field() == field)
    }

    /// The history named by a URL segment (`vaccinations`, `test-results`, `recoveries`).
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "vaccinations" => Some(History::Vaccinations),
            "test-results" => Some(History::TestResults),
            "recoveries" => Some(History::Recoveries),
            "checkins" => Some(History::CheckIns),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// 2021-11-01 12:00 in Vietnam: well inside the day in both UTC and UTC+7.
    fn now() -> DateTime<Utc> {
        "2021-11-01T05:00:00Z".parse().unwrap()
    }

    fn day(offset: i64) -> String {
        (today_in_vietnam(now()) - Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    }

    fn dose(n: u32, days_ago: i64) -> Value {
        json!({ "dose_number": n, "vaccine_code": "208", "vaccine_name": "Comirnaty",
                "date": day(days_ago), "source_record_id": format!("imm-{n}") })
    }

    fn recovery(days_ago: i64) -> Value {
        json!({ "recovered_on": day(days_ago), "source_record_id": "f0-1" })
    }

    fn test(result: &str, age: Duration) -> Value {
        let at = (now() - age).to_rfc3339();
        json!({ "date": at, "kind": "pcr", "result": result, "source_record_id": "lab-1" })
    }

    fn record(vacc: Vec<Value>, rec: Vec<Value>, tests: Vec<Value>) -> Value {
        json!({ "citizen_id": "079195000002", "vaccinations": vacc, "recoveries": rec, "test_results": tests })
    }

    fn status(vacc: Vec<Value>, rec: Vec<Value>, tests: Vec<Value>) -> CovidStatus {
        covid_status(&record(vacc, rec, tests), now())
    }

    #[test]
    fn fully_vaccinated_from_fourteen_whole_days() {
        assert_eq!(
            status(vec![dose(1, 60), dose(2, 14)], vec![], vec![]),
            CovidStatus::FullyVaccinated
        );
        assert_eq!(
            status(vec![dose(1, 60), dose(2, 13)], vec![], vec![]),
            CovidStatus::PartiallyVaccinated
        );
        // The latest dose by date counts, not the last one in the array.
        assert_eq!(
            status(vec![dose(2, 13), dose(1, 60)], vec![], vec![]),
            CovidStatus::PartiallyVaccinated
        );
        assert_eq!(
            status(vec![dose(1, 400)], vec![], vec![]),
            CovidStatus::PartiallyVaccinated
        );
    }

    #[test]
    fn recovered_for_one_hundred_eighty_days() {
        assert_eq!(
            status(vec![], vec![recovery(180)], vec![]),
            CovidStatus::Recovered
        );
        assert_eq!(status(vec![], vec![recovery(181)], vec![]), CovidStatus::None);
        assert_eq!(status(vec![], vec![recovery(0)], vec![]), CovidStatus::Recovered);
        assert_eq!(status(vec![], vec![recovery(-1)], vec![]), CovidStatus::None);
    }

    #[test]
    fn negative_test_for_seventy_two_hours() {
        let h72 = Duration::hours(72);
        assert_eq!(
            status(vec![], vec![], vec![test("negative", h72)]),
            CovidStatus::NegativeTest
        );
        let late = h72 + Duration::seconds(1);
        assert_eq!(
            status(vec![], vec![], vec![test("negative", late)]),
            CovidStatus::None
        );
        assert_eq!(
            status(vec![], vec![], vec![test("positive", Duration::hours(1))]),
            CovidStatus::None
        );
        assert_eq!(
            status(vec![], vec![], vec![test("negative", Duration::seconds(-1))]),
            CovidStatus::None
        );
        // Offsets other than Z are the same instant.
        let mut t = test("negative", Duration::zero());
        t["date"] = json!("2021-11-01T12:00:00+07:00");
        assert_eq!(status(vec![], vec![], vec![t]), CovidStatus::NegativeTest);
    }

    #[test]
    fn precedence() {
        let neg = || test("negative", Duration::hours(1));
        let all = status(vec![dose(1, 60), dose(2, 30)], vec![recovery(10)], vec![neg()]);
        assert_eq!(all, CovidStatus::FullyVaccinated);
        let rec = status(vec![dose(1, 60), dose(2, 3)], vec![recovery(10)], vec![neg()]);
        assert_eq!(rec, CovidStatus::Recovered);
        let part = status(vec![dose(1, 3)], vec![recovery(200)], vec![neg()]);
        assert_eq!(part, CovidStatus::PartiallyVaccinated);
        assert_eq!(
            status(vec![], vec![recovery(200)], vec![neg()]),
            CovidStatus::NegativeTest
        );
        assert_eq!(status(vec![], vec![], vec![]), CovidStatus::None);
        assert_eq!(covid_status(&json!({}), now()), CovidStatus::None);
    }

    #[test]
    fn today_is_the_vietnamese_date() {
        // 17:00 UTC on 31 Oct is already 1 Nov in Vietnam: a dose of 18 Oct is then 14 days old.
        let evening: DateTime<Utc> = "2021-10-31T17:00:00Z".parse().unwrap();
        assert_eq!(
            today_in_vietnam(evening),
            NaiveDate::from_ymd_opt(2021, 11, 1).unwrap()
        );
        let r = json!({ "vaccinations": [
            { "date": "2021-09-01" }, { "date": "2021-10-18" } ] });
        assert_eq!(covid_status(&r, evening), CovidStatus::FullyVaccinated);
        let before: DateTime<Utc> = "2021-10-31T16:59:59Z".parse().unwrap();
        assert_eq!(covid_status(&r, before), CovidStatus::PartiallyVaccinated);
    }

    #[test]
    fn malformed_entries_are_ignored_not_panicked_on() {
        let r = json!({ "vaccinations": [{ "date": "yesterday" }, { "date": 5 }, "x"],
                        "recoveries": {"recovered_on": "2021-10-01"},
                        "test_results": [{ "result": "negative", "date": "2021-11-01" }] });
        assert_eq!(covid_status(&r, now()), CovidStatus::None);
        assert_eq!(covid_status(&json!("not a record"), now()), CovidStatus::None);
    }

    #[test]
    fn with_derived_inserts_the_status() {
        let mut r = record(vec![dose(1, 3)], vec![], vec![]);
        with_derived(&mut r, now());
        assert_eq!(r["covid_status"], "partially_vaccinated");
        let mut s = json!("x");
        with_derived(&mut s, now());
        assert_eq!(s, json!("x"));
        assert_eq!(
            serde_json::to_value(CovidStatus::NegativeTest).unwrap(),
            "negative_test"
        );
        assert_eq!(CovidStatus::None.to_string(), "none");
    }
}
