//! Stage: identity of a citizen. The 12-digit personal ID `PPP G YY SSSSSS` (Circular 07/2016/TT-BCA):
//! a province code, a century-and-gender digit `G`, the last two digits of the birth year and a 6-digit
//! serial, with no checksum. Birth year = 1900 + 100·⌊G/2⌋ + YY; an even `G` is male, an odd one female.
//!
//! [`CitizenId`] can only hold a valid ID: 12 ASCII digits (never Arabic-Indic or full-width digits, never
//! surrounding whitespace) whose province code is in the circular's list. [`check_consistency`] ties an ID
//! to a record's birth date and gender.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// A citizen's gender as the ID and the canonical record encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    /// `"male"`; an even century digit in the ID.
    Male,
    /// `"female"`; an odd century digit in the ID.
    Female,
}

impl Gender {
    /// The canonical record's spelling: `"male"` or `"female"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
        }
    }
}

impl fmt::Display for Gender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Gender {
    type Err = IdError;

    /// Parses the canonical spelling only (`"male"` / `"female"`).
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            _ => Err(IdError::UnknownGender),
        }
    }
}

/// Why a citizen ID was refused, or disagrees with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 12 characters long.
    #[error("citizen ID must be 12 digits (got {len} characters)")]
    WrongLength {
        /// Length of the input in characters.
        len: usize,
    },
    /// 12 characters, but one is not an ASCII digit.
    #[error("citizen ID must be 12 digits (character {position} is not a digit 0-9)")]
    NotDigit {
        /// 1-based position of the first offending character.
        position: usize,
    },
    /// The first three digits are not a province code of Circular 07/2016/TT-BCA.
    #[error("unknown province code {0}")]
    UnknownProvince(String),
    /// The record's birth year is not the one the ID encodes.
    #[error("birth year {record} disagrees with ID ({id})")]
    BirthYearMismatch {
        /// Birth year from the record.
        record: i32,
        /// Birth year encoded in the ID.
        id: i32,
    },
    /// The record's gender is not the one the ID encodes.
    #[error("gender {record} disagrees with ID ({id})")]
    GenderMismatch {
        /// Gender from the record.
        record: Gender,
        /// Gender encoded in the ID.
        id: Gender,
    },
    /// A gender spelled other than `male` / `female`.
    #[error("gender must be \"male\" or \"female\"")]
    UnknownGender,
}

impl From<IdError> for ApiError {
    /// 400 `invalid_citizen_id`, whether the ID is malformed or disagrees with the record; the message
    /// says which part is wrong.
    fn from(e: IdError) -> Self {
        ApiError::new(ErrorCode::InvalidCitizenId, e.to_string())
    }
}

/// A valid 12-digit personal ID. Serialises as its string; deserialising validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CitizenId(String);

impl CitizenId {
    /// Exactly 12 ASCII digits with a known province code; surrounding whitespace is refused, not trimmed.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let len = s.chars().count();
        if len != 12 {
            return Err(IdError::WrongLength { len });
        }
        if let Some(i) = s.chars().position(|c| !c.is_ascii_digit()) {
            return Err(IdError::NotDigit { position: i + 1 });
        }
        // All 12 chars are ASCII, so byte slicing is on char boundaries.
        let code = &s[..3];
        if province_name(code).is_none() {
            return Err(IdError::UnknownProvince(code.to_owned()));
        }
        Ok(CitizenId(s.to_owned()))
    }

    /// The ID as a string of 12 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 3-digit province code (`"079"`).
    pub fn province_code(&self) -> &str {
        &self.0[..3]
    }

    /// The province's name (`"Hồ Chí Minh"`).
    pub fn province_name(&self) -> &'static str {
        // parse() only admits known codes; the fallback is unreachable in practice.
        province_name(self.province_code()).unwrap_or("")
    }

    /// The century-and-gender digit `G`.
    fn century_digit(&self) -> i32 {
        i32::from(self.0.as_bytes()[3] - b'0')
    }

    /// Birth year = 1900 + 100·⌊G/2⌋ + YY.
    pub fn birth_year(&self) -> i32 {
        let b = self.0.as_bytes();
        let yy = i32::from(b[4] - b'0') * 10 + i32::from(b[5] - b'0');
        1900 + 100 * (self.century_digit() / 2) + yy
    }

    /// Even `G` is male, odd `G` female.
    pub fn gender(&self) -> Gender {
        if self.century_digit() % 2 == 0 {
            Gender::Male
        } else {
            Gender::Female
        }
    }
}

impl fmt::Display for CitizenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CitizenId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for CitizenId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        CitizenId::parse(s)
    }
}

impl TryFrom<String> for CitizenId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        CitizenId::parse(&s)
    }
}

impl From<CitizenId> for String {
    fn from(id: CitizenId) -> String {
        id.0
    }
}

/// Province codes of Circular 07/2016/TT-BCA, sorted by code.
static PROVINCES: [(&str, &str); 63] = [
    ("001", "Hà Nội"),
    ("002", "Hà Giang"),
    ("004", "Cao Bằng"),
    ("006", "Bắc Kạn"),
    ("008", "Tuyên Quang"),
    ("010", "Lào Cai"),
    ("011", "Điện Biên"),
    ("012", "Lai Châu"),
    ("014", "Sơn La"),
    ("015", "Yên Bái"),
    ("017", "Hòa Bình"),
    ("019", "Thái Nguyên"),
    ("020", "Lạng Sơn"),
    ("022", "Quảng Ninh"),
    ("024", "Bắc Giang"),
    ("025", "Phú Thọ"),
    ("026", "Vĩnh Phúc"),
    ("027", "Bắc Ninh"),
    ("030", "Hải Dương"),
    ("031", "Hải Phòng"),
    ("033", "Hưng Yên"),
    ("034", "Thái Bình"),
    ("035", "Hà Nam"),
    ("036", "Nam Định"),
    ("037", "Ninh Bình"),
    ("038", "Thanh Hóa"),
    ("040", "Nghệ An"),
    ("042", "Hà Tĩnh"),
    ("044", "Quảng Bình"),
    ("045", "Quảng Trị"),
    ("046", "Thừa Thiên Huế"),
    ("048", "Đà Nẵng"),
    ("049", "Quảng Nam"),
    ("051", "Quảng Ngãi"),
    ("052", "Bình Định"),
    ("054", "Phú Yên"),
    ("056", "Khánh Hòa"),
    ("058", "Ninh Thuận"),
    ("060", "Bình Thuận"),
    ("062", "Kon Tum"),
    ("064", "Gia Lai"),
    ("066", "Đắk Lắk"),
    ("067", "Đắk Nông"),
    ("068", "Lâm Đồng"),
    ("070", "Bình Phước"),
    ("072", "Tây Ninh"),
    ("074", "Bình Dương"),
    ("075", "Đồng Nai"),
    ("077", "Bà Rịa - Vũng Tàu"),
    ("079", "Hồ Chí Minh"),
    ("080", "Long An"),
    ("082", "Tiền Giang"),
    ("083", "Bến Tre"),
    ("084", "Trà Vinh"),
    ("086", "Vĩnh Long"),
    ("087", "Đồng Tháp"),
    ("089", "An Giang"),
    ("091", "Kiên Giang"),
    ("092", "Cần Thơ"),
    ("093", "Hậu Giang"),
    ("094", "Sóc Trăng"),
    ("095", "Bạc Liêu"),
    ("096", "Cà Mau"),
];

/// The province name for a 3-digit code, if the code is in the list.
pub fn province_name(code: &str) -> Option<&'static str> {
    PROVINCES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| PROVINCES[i].1)
}

/// All `(code, name)` pairs, sorted by code.
pub fn provinces() -> &'static [(&'static str, &'static str)] {
    &PROVINCES
}

/// ID consistent with the record's birth date and gender, else which one disagrees (birth year first).
pub fn check_consistency(id: &CitizenId, birth_date: NaiveDate, gender: Gender) -> Result<(), IdError> {
    if birth_date.year() != id.birth_year() {
        return Err(IdError::BirthYearMismatch {
            record: birth_date.year(),
            id: id.birth_year(),
        });
    }
    if gender != id.gender() {
        return Err(IdError::GenderMismatch {
            record: gender,
            id: id.gender(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn parses_and_decodes() {
        let id = CitizenId::parse("079195000002").unwrap();
        assert_eq!(id.as_str(), "079195000002");
        assert_eq!(id.to_string(), "079195000002");
        assert_eq!(id.province_code(), "079");
        assert_eq!(id.province_name(), "Hồ Chí Minh");
        assert_eq!(id.birth_year(), 1995);
        assert_eq!(id.gender(), Gender::Female);

        let id = CitizenId::parse("001090000001").unwrap();
        assert_eq!((id.birth_year(), id.gender()), (1990, Gender::Male));
        let id = CitizenId::parse("048203000003").unwrap();
        assert_eq!((id.birth_year(), id.gender()), (2003, Gender::Male));
    }

    #[test]
    fn every_century_digit() {
        let expect = [
            (0, 1900, Gender::Male),
            (1, 1900, Gender::Female),
            (2, 2000, Gender::Male),
            (3, 2000, Gender::Female),
            (4, 2100, Gender::Male),
            (5, 2100, Gender::Female),
            (6, 2200, Gender::Male),
            (7, 2200, Gender::Female),
            (8, 2300, Gender::Male),
            (9, 2300, Gender::Female),
        ];
        for (g, century, gender) in expect {
            let id = CitizenId::parse(&format!("001{g}00123456")).unwrap();
            assert_eq!(id.birth_year(), century);
            assert_eq!(id.gender(), gender);
            let id = CitizenId::parse(&format!("001{g}99123456")).unwrap();
            assert_eq!(id.birth_year(), century + 99);
        }
    }

    #[test]
    fn length_is_exact() {
        assert_eq!(CitizenId::parse(""), Err(IdError::WrongLength { len: 0 }));
        assert_eq!(
            CitizenId::parse("07919500000"),
            Err(IdError::WrongLength { len: 11 })
        );
        assert_eq!(
            CitizenId::parse("0791950000021"),
            Err(IdError::WrongLength { len: 13 })
        );
        assert_eq!(
            CitizenId::parse(" 079195000002"),
            Err(IdError::WrongLength { len: 13 })
        );
        assert_eq!(
            CitizenId::parse("079195000002\n"),
            Err(IdError::WrongLength { len: 13 })
        );
        assert!(CitizenId::parse("079195000002").is_ok());
    }

    #[test]
    fn only_ascii_digits() {
        assert_eq!(
            CitizenId::parse("07919500000a"),
            Err(IdError::NotDigit { position: 12 })
        );
        assert_eq!(
            CitizenId::parse(" 79195000002"),
            Err(IdError::NotDigit { position: 1 })
        );
        assert_eq!(
            CitizenId::parse("+79195000002"),
            Err(IdError::NotDigit { position: 1 })
        );
        // Full-width digits: 12 chars, none ASCII.
        let fw: String = "079195000002"
            .chars()
            .map(|c| char::from_u32(c as u32 - 0x30 + 0xFF10).unwrap())
            .collect();
        assert_eq!(CitizenId::parse(&fw), Err(IdError::NotDigit { position: 1 }));
        // Arabic-Indic digits in the serial.
        let ar = "079195٠٠٠٠٠٢";
        assert_eq!(CitizenId::parse(ar), Err(IdError::NotDigit { position: 7 }));
    }

    #[test]
    fn province_must_be_known() {
        for code in ["000", "003", "005", "097", "099", "100", "999"] {
            let e = CitizenId::parse(&format!("{code}195000002")).unwrap_err();
            assert_eq!(e, IdError::UnknownProvince(code.to_owned()));
        }
        assert_eq!(
            CitizenId::parse("003195000002").unwrap_err().to_string(),
            "unknown province code 003"
        );
        for (code, _) in provinces() {
            assert!(CitizenId::parse(&format!("{code}195000002")).is_ok(), "{code}");
        }
    }

    #[test]
    fn province_table() {
        assert_eq!(provinces().len(), 63);
        assert!(
            provinces().windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
        assert_eq!(province_name("001"), Some("Hà Nội"));
        assert_eq!(province_name("096"), Some("Cà Mau"));
        assert_eq!(province_name("003"), None);
        assert_eq!(province_name("79"), None);
        assert_eq!(province_name(""), None);
    }

    #[test]
    fn consistency() {
        let id = CitizenId::parse("079195000002").unwrap();
        assert_eq!(check_consistency(&id, date(1995, 3, 14), Gender::Female), Ok(()));
        assert_eq!(check_consistency(&id, date(1995, 1, 1), Gender::Female), Ok(()));
        assert_eq!(check_consistency(&id, date(1995, 12, 31), Gender::Female), Ok(()));
        let e = check_consistency(&id, date(1994, 12, 31), Gender::Female).unwrap_err();
        assert_eq!(
            e,
            IdError::BirthYearMismatch {
                record: 1994,
                id: 1995
            }
        );
        let e = check_consistency(&id, date(1995, 3, 14), Gender::Male).unwrap_err();
        assert_eq!(
            e,
            IdError::GenderMismatch {
                record: Gender::Male,
                id: Gender::Female
            }
        );
        assert_eq!(e.to_string(), "gender male disagrees with ID (female)");

        // Same YY, wrong century.
        let id = CitizenId::parse("079395000002").unwrap();
        let e = check_consistency(&id, date(1995, 3, 14), Gender::Female).unwrap_err();
        assert_eq!(e.to_string(), "birth year 1995 disagrees with ID (2095)");
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = CitizenId::parse("001090000001").unwrap();
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v, serde_json::json!("001090000001"));
        let back: CitizenId = serde_json::from_value(v).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<CitizenId>("\"003195000002\"").is_err());
        assert!(serde_json::from_str::<CitizenId>("79195000002").is_err());

        assert_eq!(serde_json::to_string(&Gender::Female).unwrap(), "\"female\"");
        assert_eq!(serde_json::from_str::<Gender>("\"male\"").unwrap(), Gender::Male);
        assert!(serde_json::from_str::<Gender>("\"Male\"").is_err());
        assert_eq!("female".parse::<Gender>(), Ok(Gender::Female));
        assert_eq!("nữ".parse::<Gender>(), Err(IdError::UnknownGender));
    }

    #[test]
    fn api_error_mapping() {
        let e: ApiError = IdError::UnknownProvince("003".into()).into();
        assert_eq!(e.code, "invalid_citizen_id");
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.message, "unknown province code 003");
        let e: ApiError = IdError::BirthYearMismatch {
            record: 1995,
            id: 2095,
        }
        .into();
        assert_eq!((e.code.as_str(), e.status.as_u16()), ("invalid_citizen_id", 400));
    }
}
