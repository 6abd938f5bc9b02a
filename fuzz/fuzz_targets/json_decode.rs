//! Fuzz target: the strict JSON decoder every request body goes through (duplicate keys, depth).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = lienthong::json::parse(data) {
        // Whatever it accepts is plain JSON that serde_json reads back the same.
        let text = value.to_string();
        let again = lienthong::json::parse(text.as_bytes());
        assert_eq!(again.ok(), Some(value));
    }
});
