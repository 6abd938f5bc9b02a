//! Value transforms a connector file names: `trim`, `upper`, `lower`, `int`, date conversions between the
//! agency's formats and ISO, and enum tables (`enum:<table>` from the file's `[enums.<table>]`).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::Value;

/// A date format agencies use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateFormat {
    /// `2021-08-01`.
    Iso,
    /// `01/08/2021`.
    DdMmYyyySlash,
    /// `01082021` (the CCCD QR's form).
    DdMmYyyy,
    /// An ISO date-time (`2021-08-01T09:30:00+07:00`) or date; the calendar date as written.
    IsoDateTime,
}

impl DateFormat {
    fn parse_name(name: &str) -> Option<Self> {
        match name {
            "iso" => Some(Self::Iso),
            "dd/mm/yyyy" => Some(Self::DdMmYyyySlash),
            "ddmmyyyy" => Some(Self::DdMmYyyy),
            "iso-datetime" => Some(Self::IsoDateTime),
            _ => None,
        }
    }

    fn read(self, s: &str) -> Option<NaiveDate> {
        match self {
            Self::Iso => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
            Self::DdMmYyyySlash => NaiveDate::parse_from_str(s, "%d/%m/%Y").ok(),
            Self::DdMmYyyy => (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| NaiveDate::parse_from_str(s, "%d%m%Y").ok())
                .flatten(),
            Self::IsoDateTime => {
                if s.len() == 10 {
                    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
                } else {
                    chrono::DateTime::parse_from_rfc3339(s)
                        .ok()
                        .map(|t| t.date_naive())
                }
            }
        }
    }

    fn write(self, d: NaiveDate) -> String {
        match self {
            Self::Iso | Self::IsoDateTime => d.format("%Y-%m-%d").to_string(),
            Self::DdMmYyyySlash => d.format("%d/%m/%Y").to_string(),
            Self::DdMmYyyy => d.format("%d%m%Y").to_string(),
        }
    }
}

/// One transform.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Strip surrounding white space.
    Trim,
    /// Upper-case.
    Upper,
    /// Lower-case.
    Lower,
    /// A JSON number from text (or a number).
    Int,
    /// Agency date format → ISO date (`date_from:dd/mm/yyyy`).
    DateFrom(DateFormat),
    /// ISO date → agency date format (`date_to:dd/mm/yyyy`).
    DateTo(DateFormat),
    /// Look the value up in a table (`enum:<table>`); an unmapped value is refused.
    Enum(String, BTreeMap<String, String>),
}

impl Transform {
    /// Parse a transform name, resolving enum tables.
    pub fn parse(name: &str, enums: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Self, String> {
        let unknown = || format!("unknown transform {name:?}");
        Ok(match name.split_once(':') {
            None => match name {
                "trim" => Self::Trim,
                "upper" => Self::Upper,
                "lower" => Self::Lower,
                "int" => Self::Int,
                _ => return Err(unknown()),
            },
            Some(("date_from", f)) => Self::DateFrom(DateFormat::parse_name(f).ok_or_else(unknown)?),
            Some(("date_to", f)) => Self::DateTo(DateFormat::parse_name(f).ok_or_else(unknown)?),
            Some(("enum", table)) => {
                let map = enums
                    .get(table)
                    .ok_or_else(|| format!("enum table {table:?} is not defined under [enums]"))?;
                Self::Enum(table.to_string(), map.clone())
            }
            _ => return Err(unknown()),
        })
    }

    /// Apply to a value; `Err` carries a message for a 422 naming the field.
    pub fn apply(&self, value: Value) -> Result<Value, String> {
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("expected a text value, got {other}")),
        };
        Ok(match self {
            Self::Trim => Value::String(text.trim().to_string()),
            Self::Upper => Value::String(text.to_uppercase()),
            Self::Lower => Value::String(text.to_lowercase()),
            Self::Int => Value::from(
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{text:?} is not a whole number"))?,
            ),
            Self::DateFrom(f) => {
                let d = f
                    .read(text.trim())
                    .ok_or_else(|| format!("{text:?} is not a valid date in the expected format"))?;
                Value::String(d.format("%Y-%m-%d").to_string())
            }
            Self::DateTo(f) => {
                let d = NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                    .map_err(|_| format!("{text:?} is not an ISO date"))?;
                Value::String(f.write(d))
            }
            Self::Enum(table, map) => {
                // Tables match Vietnamese text in NFC, whatever normalisation the sender used.
                use unicode_normalization::UnicodeNormalization;
                let key: String = text.trim().nfc().collect();
                let hit = map.get(&key).or_else(|| {
                    map.iter()
                        .find(|(k, _)| k.to_lowercase() == key.to_lowercase())
                        .map(|(_, v)| v)
                });
                Value::String(
                    hit.ok_or_else(|| format!("{text:?} is not in table {table}"))?
                        .clone(),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Transform {
        let mut enums = BTreeMap::new();
        enums.insert(
            "gioi_tinh".to_string(),
            BTreeMap::from([
                ("Nam".to_string(), "male".to_string()),
                ("Nữ".to_string(), "female".to_string()),
            ]),
        );
        Transform::parse(name, &enums).unwrap_or(Transform::Trim)
    }

    #[test]
    fn dates_convert_both_ways_and_refuse_impossible_ones() {
        assert_eq!(
            t("date_from:dd/mm/yyyy").apply("01/08/2021".into()),
            Ok(Value::from("2021-08-01"))
        );
        assert_eq!(
            t("date_from:ddmmyyyy").apply("01082021".into()),
            Ok(Value::from("2021-08-01"))
        );
        assert_eq!(
            t("date_from:iso-datetime").apply("2021-08-01T23:30:00+07:00".into()),
            Ok(Value::from("2021-08-01"))
        );
        assert_eq!(
            t("date_from:iso-datetime").apply("2013-01-10".into()),
            Ok(Value::from("2013-01-10"))
        );
        assert!(t("date_from:ddmmyyyy").apply("31022021".into()).is_err());
        assert!(t("date_from:dd/mm/yyyy").apply("2021-08-01".into()).is_err());
        assert_eq!(
            t("date_to:dd/mm/yyyy").apply("1990-05-20".into()),
            Ok(Value::from("20/05/1990"))
        );
    }

    #[test]
    fn enum_tables_match_nfc_and_nfd_and_refuse_unknown_values() {
        use unicode_normalization::UnicodeNormalization;
        assert_eq!(t("enum:gioi_tinh").apply("Nữ".into()), Ok(Value::from("female")));
        assert_eq!(
            t("enum:gioi_tinh").apply("Nữ".nfd().collect::<String>().into()),
            Ok(Value::from("female"))
        );
        assert_eq!(t("enum:gioi_tinh").apply(" nam ".into()), Ok(Value::from("male")));
        assert!(t("enum:gioi_tinh").apply("Khác".into()).is_err());
        assert!(Transform::parse("enum:nope", &BTreeMap::new()).is_err());
        assert!(Transform::parse("shout", &BTreeMap::new()).is_err());
    }

    #[test]
    fn text_transforms() {
        assert_eq!(t("trim").apply("  a ".into()), Ok(Value::from("a")));
        assert_eq!(t("upper").apply("fk1234".into()), Ok(Value::from("FK1234")));
        assert_eq!(t("int").apply("2".into()), Ok(Value::from(2)));
        assert_eq!(t("int").apply(Value::from(3)), Ok(Value::from(3)));
        assert!(t("int").apply("two".into()).is_err());
    }
}
