//! Fuzz target: the 12-digit personal ID validator and its consistency check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = lienthong::citizen_id::CitizenId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(lienthong::citizen_id::province_name(id.province_code()).is_some());
        let year = id.birth_year();
        assert!((1900..=2399).contains(&year), "{year}");
        if let Some(date) = chrono::NaiveDate::from_ymd_opt(year, 1, 1) {
            assert!(lienthong::citizen_id::check_consistency(&id, date, id.gender()).is_ok());
        }
    }
});
