//! The holder's name as a DCC `nam`: split the Vietnamese way, and transliterated per ICAO Doc 9303
//! Part 3 for the machine-readable `fnt`/`gnt`.

use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

/// Longest `fn`, `gn`, `fnt` and `gnt` the DCC schema allows.
const MAX_NAME_CHARS: usize = 80;

/// `nam` for a Vietnamese full name. Vietnamese names put the family name first: "Nguyễn Thị Ánh
/// Nguyệt" is family name Nguyễn, given names (middle and personal) Thị Ánh Nguyệt — the split Viet Nam's
/// own passports use. A one-word name is a family name only.
pub fn person_name(full_name: &str) -> Value {
    let mut words = full_name.split_whitespace();
    let family = words.next().unwrap_or_default();
    let given: Vec<&str> = words.collect();
    let given = given.join(" ");
    let mut nam = serde_json::Map::new();
    nam.insert("fn".into(), json!(truncate(family)));
    nam.insert("fnt".into(), json!(truncate(&icao_transliteration(family))));
    if !given.is_empty() {
        nam.insert("gn".into(), json!(truncate(&given)));
        nam.insert("gnt".into(), json!(truncate(&icao_transliteration(&given))));
    }
    Value::Object(nam)
}

/// ICAO 9303 machine-readable form: diacritics removed, Đ → D (and the other letters ICAO lists),
/// upper case, spaces and hyphens → `<`, anything else outside A–Z dropped.
pub fn icao_transliteration(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.nfd() {
        match c {
            'A'..='Z' => out.push(c),
            'a'..='z' => out.push(c.to_ascii_uppercase()),
            // Runs of separators become one `<`; none at the start.
            ' ' | '-' if !out.is_empty() && !out.ends_with('<') => out.push('<'),
            'Đ' | 'đ' | 'Ð' | 'ð' => out.push('D'),
            'Æ' | 'æ' => out.push_str("AE"),
            'Ø' | 'ø' | 'Œ' | 'œ' => out.push_str("OE"),
            'ß' => out.push_str("SS"),
            'Þ' | 'þ' => out.push_str("TH"),
            'Ł' | 'ł' => out.push('L'),
            'Ħ' | 'ħ' => out.push('H'),
            'ı' => out.push('I'),
            // Combining marks (the diacritics NFD split off), apostrophes, digits: dropped.
            _ => {}
        }
    }
    while out.ends_with('<') {
        out.pop();
    }
    out
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_NAME_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vietnamese_names_split_family_first_and_transliterate() {
        assert_eq!(
            person_name("Nguyễn Thị Ánh Nguyệt"),
            json!({ "fn": "Nguyễn", "fnt": "NGUYEN", "gn": "Thị Ánh Nguyệt", "gnt": "THI<ANH<NGUYET" })
        );
        assert_eq!(
            person_name("Đặng Hùng"),
            json!({ "fn": "Đặng", "fnt": "DANG", "gn": "Hùng", "gnt": "HUNG" })
        );
        assert_eq!(person_name("Đặng"), json!({ "fn": "Đặng", "fnt": "DANG" }));
        assert_eq!(
            person_name("  Trần   Thị  Bình "),
            json!({ "fn": "Trần", "fnt": "TRAN", "gn": "Thị Bình", "gnt": "THI<BINH" })
        );
    }

    #[test]
    fn icao_rules() {
        assert_eq!(icao_transliteration("Đỗ Đức"), "DO<DUC");
        assert_eq!(icao_transliteration("Ưng Ơn Ỹ"), "UNG<ON<Y");
        assert_eq!(icao_transliteration("Smith-Jones"), "SMITH<JONES");
        assert_eq!(icao_transliteration("d'Červenková"), "DCERVENKOVA");
        // Already decomposed input transliterates the same as composed input.
        let decomposed: String = "Nguyễn".nfd().collect();
        assert_eq!(icao_transliteration(&decomposed), "NGUYEN");
    }
}
