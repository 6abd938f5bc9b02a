//! Fuzz target: the CCCD QR payload parser and the name comparison rule.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(qr) = lienthong::qr::parse(text) {
        // What parses re-encodes to a payload that parses to the same fields.
        let again = lienthong::qr::parse(&lienthong::qr::encode(&qr));
        assert_eq!(again.ok().as_ref(), Some(&qr));
        assert!(lienthong::qr::names_match(&qr.full_name, &qr.full_name));
    }
    // Normalisation is idempotent on any text.
    let once = lienthong::qr::normalize_name(text);
    assert_eq!(lienthong::qr::normalize_name(&once), once);
});
