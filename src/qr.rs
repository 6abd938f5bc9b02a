//! Stage: connector input. The QR code printed on the chip-based citizen ID card (CCCD).
//!
//! The payload is one line of `|`-separated fields:
//!
//! ```text
//! 079195000002|025123456|Trần Thị Bình|14031995|Nữ|12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh|10042021
//! ```
//!
//! 12-digit ID, old 9-digit ID number (often empty), full name, birth date `ddmmyyyy`, gender `Nam`/`Nữ`,
//! permanent address, issue date `ddmmyyyy`. Some readers emit 6 fields, without the old number.
//!
//! The payload is untrusted. [`parse`] refuses more than [`MAX_PAYLOAD_BYTES`], strips one leading UTF-8
//! BOM and trailing CR/LF, refuses control and invisible formatting characters (bidi overrides, zero-width
//! characters, a BOM anywhere else), and validates every field: the ID with [`CitizenId::parse`] and
//! [`check_consistency`] against the QR's own birth date and gender, real calendar dates (no 31 February),
//! an issue date not before the birth date. Name and address come back NFC-normalised, trimmed, with runs
//! of whitespace collapsed to one space. The gender is accepted in any case, NFC or NFD (`Nữ` decomposed).
//!
//! **Comparing names** ([`normalize_name`], [`names_match`]): two names match when, after Unicode NFC
//! normalisation, trimming, collapsing every run of inner whitespace to one ASCII space and Unicode
//! lower-casing, they are the same string. Diacritics are significant (`Lê` ≠ `Le`): they distinguish
//! different Vietnamese names.

use chrono::{Datelike, NaiveDate};
use unicode_normalization::UnicodeNormalization;

use crate::citizen_id::{check_consistency, CitizenId, Gender, IdError};
use crate::error::{ApiError, ErrorCode};

/// Longest payload [`parse`] looks at, in bytes (before any stripping).
pub const MAX_PAYLOAD_BYTES: usize = 1024;

/// Longest full name, in characters (as in the canonical record).
const MAX_NAME_CHARS: usize = 100;

/// Longest permanent address, in characters.
const MAX_ADDRESS_CHARS: usize = 400;

/// Longest piece of an offending value echoed back in an error.
const MAX_ECHO_CHARS: usize = 16;

/// The fields of a CCCD QR payload, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CccdQr {
    /// The 12-digit personal ID, consistent with `birth_date` and `gender`.
    pub citizen_id: CitizenId,
    /// The old 9-digit ID card (CMND) number, if the card carries one.
    pub old_id_number: Option<String>,
    /// Full name, NFC, trimmed, single-spaced.
    pub full_name: String,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Gender (`Nam` = male, `Nữ` = female on the card).
    pub gender: Gender,
    /// Permanent address as one line of text, NFC, trimmed, single-spaced.
    pub permanent_address: String,
    /// Date the card was issued; never before `birth_date`.
    pub issue_date: NaiveDate,
}

/// Why a QR payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrError {
    /// Longer than [`MAX_PAYLOAD_BYTES`].
    #[error("QR payload is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Payload length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A control or invisible formatting character.
    #[error("QR payload contains a control or invisible character at position {position}")]
    ControlChar {
        /// 1-based character position, after BOM stripping.
        position: usize,
    },
    /// Neither 7 nor 6 `|`-separated fields.
    #[error("QR payload has {0} fields; expected 7 separated by '|' (or 6 without the old ID number)")]
    WrongFieldCount(usize),
    /// The ID is malformed or disagrees with the QR's birth date or gender.
    #[error("citizen ID: {0}")]
    BadId(#[from] IdError),
    /// The old ID number is neither empty nor 9 ASCII digits.
    #[error("old ID number must be empty or 9 digits")]
    BadOldId,
    /// The full name is empty, too long or has characters a name cannot have.
    #[error("full name: {0}")]
    BadName(&'static str),
    /// Not a `ddmmyyyy` calendar date.
    #[error("{field} {value:?} is not a valid ddmmyyyy date")]
    BadDate {
        /// `birth_date` or `issue_date`.
        field: &'static str,
        /// The offending value (at most 16 characters of it).
        value: String,
    },
    /// Gender neither `Nam` nor `Nữ`.
    #[error("gender must be Nam or Nữ")]
    BadGender,
    /// The address is empty or too long.
    #[error("permanent address: {0}")]
    BadAddress(&'static str),
    /// The card would have been issued before its holder was born.
    #[error("issue date is before the birth date")]
    IssueBeforeBirth,
}

impl From<QrError> for ApiError {
    /// 400 `invalid_qr_payload`; the message names the bad field.
    fn from(e: QrError) -> Self {
        ApiError::new(ErrorCode::InvalidQrPayload, e.to_string())
    }
}

/// Control characters plus the invisible ones that can disguise text (bidi overrides, zero-width, BOM).
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// NFC, trimmed, every whitespace run collapsed to one space.
fn clean_text(s: &str) -> String {
    let nfc: String = s.nfc().collect();
    nfc.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO_CHARS).collect()
}

fn parse_date(field: &'static str, s: &str) -> Result<NaiveDate, QrError> {
    let bad = || QrError::BadDate {
        field,
        value: echo(s),
    };
    let b = s.as_bytes();
    if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let (day, month, year) = (n(0..2), n(2..4), n(4..8));
    let year = i32::try_from(year).map_err(|_| bad())?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(bad)
}

fn parse_old_id(s: &str) -> Result<Option<String>, QrError> {
    if s.is_empty() {
        Ok(None)
    } else if s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(Some(s.to_owned()))
    } else {
        Err(QrError::BadOldId)
    }
}

fn parse_name(s: &str) -> Result<String, QrError> {
    let name = clean_text(s);
    if name.is_empty() {
        return Err(QrError::BadName("must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(QrError::BadName("longer than 100 characters"));
    }
    // Letters, spaces and the punctuation of some minority names (H'Hen Niê); combining marks in case a
    // letter has no precomposed form.
    let ok =
        |c: char| c.is_alphabetic() || matches!(c, ' ' | '\'' | '’' | '-' | '.' | '\u{0300}'..='\u{036F}');
    if !name.chars().all(ok) {
        return Err(QrError::BadName("may only contain letters, spaces and ' - ."));
    }
    Ok(name)
}

fn parse_gender(s: &str) -> Result<Gender, QrError> {
    let g: String = s.trim().nfc().collect::<String>().to_lowercase();
    match g.as_str() {
        "nam" => Ok(Gender::Male),
        "nữ" => Ok(Gender::Female),
        _ => Err(QrError::BadGender),
    }
}

fn parse_address(s: &str) -> Result<String, QrError> {
    let a = clean_text(s);
    if a.is_empty() {
        return Err(QrError::BadAddress("must not be empty"));
    }
    if a.chars().count() > MAX_ADDRESS_CHARS {
        return Err(QrError::BadAddress("longer than 400 characters"));
    }
    Ok(a)
}

/// Parses and validates a CCCD QR payload (7 fields, or 6 without the old ID number).
pub fn parse(payload: &str) -> Result<CccdQr, QrError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(QrError::TooLong {
            len: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let s = payload.strip_prefix('\u{FEFF}').unwrap_or(payload);
    let s = s.trim_end_matches(['\r', '\n']);
    if let Some(i) = s.chars().position(is_forbidden) {
        return Err(QrError::ControlChar { position: i + 1 });
    }
    let fields: Vec<&str> = s.split('|').collect();
    let (id, old, name, birth, gender, address, issue) = match fields[..] {
        [id, old, name, birth, gender, address, issue] => (id, old, name, birth, gender, address, issue),
        [id, name, birth, gender, address, issue] => (id, "", name, birth, gender, address, issue),
        _ => return Err(QrError::WrongFieldCount(fields.len())),
    };
    let citizen_id = CitizenId::parse(id)?;
    let old_id_number = parse_old_id(old)?;
    let full_name = parse_name(name)?;
    let birth_date = parse_date("birth_date", birth)?;
    let gender = parse_gender(gender)?;
    let permanent_address = parse_address(address)?;
    let issue_date = parse_date("issue_date", issue)?;
    check_consistency(&citizen_id, birth_date, gender)?;
    if issue_date < birth_date {
        return Err(QrError::IssueBeforeBirth);
    }
    Ok(CccdQr {
        citizen_id,
        old_id_number,
        full_name,
        birth_date,
        gender,
        permanent_address,
        issue_date,
    })
}

fn ddmmyyyy(d: NaiveDate) -> String {
    format!("{:02}{:02}{:04}", d.day(), d.month(), d.year())
}

/// The 7-field payload for `qr` (an empty old-number field when there is none). Meant for tests and
/// sample data: a field containing `|` would not survive [`parse`].
pub fn encode(qr: &CccdQr) -> String {
    let gender = match qr.gender {
        Gender::Male => "Nam",
        Gender::Female => "Nữ",
    };
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        qr.citizen_id,
        qr.old_id_number.as_deref().unwrap_or(""),
        qr.full_name,
        ddmmyyyy(qr.birth_date),
        gender,
        qr.permanent_address,
        ddmmyyyy(qr.issue_date)
    )
}

/// The form in which names are compared: NFC, trimmed, inner whitespace runs collapsed to one space,
/// Unicode lower-case (see the module docs).
pub fn normalize_name(s: &str) -> String {
    // NFC again after lower-casing, which can in principle leave a decomposed sequence.
    clean_text(s).to_lowercase().nfc().collect()
}

/// Whether two names are the same under [`normalize_name`].
pub fn names_match(a: &str, b: &str) -> bool {
    normalize_name(a) == normalize_name(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const BINH: &str = "079195000002|025123456|Trần Thị Bình|14031995|Nữ|12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh|10042021";

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn binh() -> CccdQr {
        CccdQr {
            citizen_id: CitizenId::parse("079195000002").unwrap(),
            old_id_number: Some("025123456".into()),
            full_name: "Trần Thị Bình".into(),
            birth_date: date(1995, 3, 14),
            gender: Gender::Female,
            permanent_address: "12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh".into(),
            issue_date: date(2021, 4, 10),
        }
    }

    /// BINH with field `i` replaced by `v`.
    fn with_field(i: usize, v: &str) -> String {
        let mut f: Vec<&str> = BINH.split('|').collect();
        f[i] = v;
        f.join("|")
    }

    #[test]
    fn parses_seven_fields() {
        assert_eq!(parse(BINH).unwrap(), binh());
        assert_eq!(encode(&binh()), BINH);
    }

    #[test]
    fn parses_six_fields_and_empty_old_number() {
        let six = "079195000002|Trần Thị Bình|14031995|Nữ|12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh|10042021";
        let expect = CccdQr {
            old_id_number: None,
            ..binh()
        };
        assert_eq!(parse(six).unwrap(), expect);
        assert_eq!(parse(&with_field(1, "")).unwrap(), expect);
        assert_eq!(encode(&expect), with_field(1, ""));
    }

    #[test]
    fn field_count() {
        assert_eq!(parse(""), Err(QrError::WrongFieldCount(1)));
        assert_eq!(
            parse("079195000002|Trần Thị Bình|14031995|Nữ|10042021"),
            Err(QrError::WrongFieldCount(5))
        );
        assert_eq!(parse(&format!("{BINH}|")), Err(QrError::WrongFieldCount(8)));
        assert_eq!(parse("||||||||||"), Err(QrError::WrongFieldCount(11)));
    }

    #[test]
    fn strips_bom_and_trailing_newline() {
        for p in [
            format!("\u{FEFF}{BINH}"),
            format!("{BINH}\n"),
            format!("{BINH}\r\n"),
            format!("\u{FEFF}{BINH}\r\n\r\n"),
        ] {
            assert_eq!(parse(&p).unwrap(), binh(), "{p:?}");
        }
        // Only one leading BOM, and none elsewhere; no leading newline.
        assert!(matches!(
            parse(&format!("\u{FEFF}\u{FEFF}{BINH}")),
            Err(QrError::ControlChar { position: 1 })
        ));
        assert!(matches!(
            parse(&format!("\n{BINH}")),
            Err(QrError::ControlChar { position: 1 })
        ));
        assert!(matches!(
            parse(&format!("{BINH}\u{FEFF}")),
            Err(QrError::ControlChar { .. })
        ));
    }

    #[test]
    fn length_cap_counts_bytes_before_stripping() {
        let pad = MAX_PAYLOAD_BYTES - BINH.len();
        let at_cap = format!("{BINH}{}", "\n".repeat(pad));
        assert_eq!(at_cap.len(), MAX_PAYLOAD_BYTES);
        assert_eq!(parse(&at_cap).unwrap(), binh());
        let over = format!("{at_cap}\n");
        assert_eq!(parse(&over), Err(QrError::TooLong { len: 1025, max: 1024 }));
        assert!(matches!(
            parse(&"|".repeat(100_000)),
            Err(QrError::TooLong { .. })
        ));
    }

    #[test]
    fn refuses_control_and_invisible_characters() {
        for bad in [
            "Trần\tThị Bình",
            "Trần Thị\u{0}Bình",
            "Trần\u{202E}Thị Bình",
            "Trần\u{200B}Thị Bình",
            "Trần\u{7F}",
        ] {
            assert!(
                matches!(parse(&with_field(2, bad)), Err(QrError::ControlChar { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(&format!("0791\n95000002{}", &BINH[12..])),
            Err(QrError::ControlChar { position: 5 })
        ));
    }

    #[test]
    fn validates_id() {
        assert!(matches!(
            parse(&with_field(0, "003195000002")),
            Err(QrError::BadId(IdError::UnknownProvince(_)))
        ));
        assert!(matches!(
            parse(&with_field(0, " 79195000002")),
            Err(QrError::BadId(IdError::NotDigit { .. }))
        ));
        assert!(matches!(
            parse(&with_field(0, "07919500000")),
            Err(QrError::BadId(IdError::WrongLength { len: 11 }))
        ));
        // Consistency with the QR's own birth date and gender.
        assert_eq!(
            parse(&with_field(3, "14031996")),
            Err(QrError::BadId(IdError::BirthYearMismatch {
                record: 1996,
                id: 1995
            }))
        );
        assert_eq!(
            parse(&with_field(4, "Nam")),
            Err(QrError::BadId(IdError::GenderMismatch {
                record: Gender::Male,
                id: Gender::Female
            }))
        );
    }

    #[test]
    fn validates_old_number() {
        for bad in ["02512345", "0251234567", "02512345a", " 25123456", "٠٢٥١٢٣٤٥٦"] {
            assert_eq!(parse(&with_field(1, bad)), Err(QrError::BadOldId), "{bad:?}");
        }
    }

    #[test]
    fn validates_dates() {
        for bad in [
            "31022000",
            "29021900",
            "00011995",
            "14001995",
            "14131995",
            "1403199",
            "140319950",
            "14-03-95",
            "１４０３１９９５",
        ] {
            assert!(
                matches!(
                    parse(&with_field(3, bad)),
                    Err(QrError::BadDate {
                        field: "birth_date",
                        ..
                    })
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    parse(&with_field(6, bad)),
                    Err(QrError::BadDate {
                        field: "issue_date",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        // 29 February of a leap year is fine.
        let leap = "001200000001||Nguyễn Văn An|29022000|Nam|1 Tràng Tiền, Hà Nội|29022016";
        let q = parse(leap).unwrap();
        assert_eq!(
            (q.birth_date, q.issue_date),
            (date(2000, 2, 29), date(2016, 2, 29))
        );
        assert_eq!(parse(&with_field(6, "13031995")), Err(QrError::IssueBeforeBirth));
        assert!(parse(&with_field(6, "14031995")).is_ok());
        let e = parse(&with_field(3, "31022000")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "birth_date \"31022000\" is not a valid ddmmyyyy date"
        );
    }

    #[test]
    fn gender_any_case_nfc_or_nfd() {
        let nfd: String = "Nữ".nfd().collect();
        assert_ne!(nfd, "Nữ");
        for g in ["Nữ", "nữ", "NỮ", nfd.as_str(), &nfd.to_uppercase()] {
            assert_eq!(parse(&with_field(4, g)).unwrap().gender, Gender::Female, "{g:?}");
        }
        let male = "001090000001||Nguyễn Văn An|01011990|NAM|1 Tràng Tiền, Hà Nội|01012021";
        assert_eq!(parse(male).unwrap().gender, Gender::Male);
        for bad in ["", "Nu", "F", "female", "Nữa"] {
            assert_eq!(parse(&with_field(4, bad)), Err(QrError::BadGender), "{bad:?}");
        }
    }

    #[test]
    fn name_is_normalised_and_validated() {
        let nfd: String = "  Trần   Thị\u{A0}Bình ".nfd().collect();
        assert_eq!(parse(&with_field(2, &nfd)).unwrap().full_name, "Trần Thị Bình");
        assert_eq!(parse(&with_field(2, "H'Hen Niê")).unwrap().full_name, "H'Hen Niê");
        for bad in ["", "   ", "Trần Thị B1nh", "Trần <b>", "Trần;"] {
            assert!(
                matches!(parse(&with_field(2, bad)), Err(QrError::BadName(_))),
                "{bad:?}"
            );
        }
        let long = "A".repeat(101);
        assert!(matches!(parse(&with_field(2, &long)), Err(QrError::BadName(_))));
        assert!(parse(&with_field(2, &"A".repeat(100))).is_ok());
        assert!(matches!(parse(&with_field(5, "  ")), Err(QrError::BadAddress(_))));
    }

    #[test]
    fn names_compare_after_normalisation() {
        let nfd: String = "Trần Thị Bình".nfd().collect();
        assert!(names_match("Trần Thị Bình", &nfd));
        assert!(names_match("  TRẦN  thị\tBÌNH ", "Trần Thị Bình"));
        assert!(!names_match("Tran Thi Binh", "Trần Thị Bình"));
        assert!(!names_match("Trần Thị Bình", "Trần Thị Bính"));
        assert_eq!(normalize_name(" Đặng  Văn\u{A0}Ẩn "), "đặng văn ẩn");
        assert_eq!(normalize_name(""), "");
    }

    #[test]
    fn api_error_mapping() {
        let e: ApiError = QrError::BadGender.into();
        assert_eq!((e.code.as_str(), e.status.as_u16()), ("invalid_qr_payload", 400));
    }

    /// The Vietnamese alphabet with every tone mark, lower-case.
    const VI_LETTERS: &str =
        "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ";

    fn arb_qr() -> impl Strategy<Value = CccdQr> {
        let letters = format!("{VI_LETTERS}{}", VI_LETTERS.to_uppercase());
        let word = proptest::string::string_regex(&format!("[{letters}]{{1,8}}")).unwrap();
        let addr_word = proptest::string::string_regex(&format!("[{letters}0-9,./-]{{1,10}}")).unwrap();
        (
            0..crate::citizen_id::provinces().len(),
            any::<bool>(),
            1900i32..2100,
            1u32..=366,
            0u32..1_000_000,
            proptest::option::of("[0-9]{9}"),
            proptest::collection::vec(word, 1..5),
            proptest::collection::vec(addr_word, 1..8),
            0u32..40_000,
        )
            .prop_map(|(p, female, year, ord, serial, old, name, addr, issue_after)| {
                let birth_date = NaiveDate::from_yo_opt(year, ord)
                    .or_else(|| NaiveDate::from_yo_opt(year, 365))
                    .unwrap();
                let g = 2 * ((year - 1900) / 100) + i32::from(female);
                let id = format!(
                    "{}{g}{:02}{serial:06}",
                    crate::citizen_id::provinces()[p].0,
                    year % 100
                );
                CccdQr {
                    citizen_id: CitizenId::parse(&id).unwrap(),
                    old_id_number: old,
                    full_name: name.join(" ").nfc().collect(),
                    birth_date,
                    gender: if female { Gender::Female } else { Gender::Male },
                    permanent_address: addr.join(" ").nfc().collect(),
                    issue_date: birth_date + chrono::Days::new(u64::from(issue_after)),
                }
            })
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            let _ = parse(&s);
            let _ = normalize_name(&s);
        }

        #[test]
        fn never_panics_near_valid(s in "[0-9|NnamữỮ \u{FEFF}\r\n\t.A-Za-zà-ỹ]{0,120}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_mutations(i in 0..7usize, s in any::<String>()) {
            let _ = parse(&with_field(i, &s));
        }

        #[test]
        fn encode_round_trips(q in arb_qr()) {
            prop_assert_eq!(parse(&encode(&q)), Ok(q));
        }
    }
}
