//! The value-set table: a stored vaccine code (CVX, or the local code the population uses) → the EU
//! eHealth Network value sets of the DCC (`vp` vaccine type, `mp` medicinal product, `ma` marketing
//! authorisation holder), and the doses of its primary series. Codes per "Value Sets for Digital Covid
//! Certificates", version 1.14 (the version the shipped schema 1.3.3 names).

/// One vaccine's DCC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaccineCodes {
    /// The stored `vaccine_code`.
    pub vaccine_code: &'static str,
    /// `vp`: vaccine or prophylaxis (SNOMED CT or ATC).
    pub prophylaxis: &'static str,
    /// `mp`: medicinal product (EU authorisation number, or the product name the value set lists).
    pub product: &'static str,
    /// `ma`: marketing authorisation holder or manufacturer (EMA SPOR organisation id, or value-set name).
    pub holder: &'static str,
    /// Doses of the primary series (`sd` for a primary dose; a booster counts on).
    pub primary_series: u32,
}

/// SNOMED CT 1119349007: SARS-CoV-2 mRNA vaccine.
const MRNA: &str = "1119349007";
/// ATC J07BX03: covid-19 vaccines (the value set's code for other types).
const COVID19_VACCINES: &str = "J07BX03";

/// The table. Every vaccine the population and the connectors store is here; a code outside it is refused
/// with 422 `vaccine_not_in_value_set` rather than guessed.
pub const VACCINES: [VaccineCodes; 5] = [
    VaccineCodes {
        vaccine_code: "208",
        prophylaxis: MRNA,
        product: "EU/1/20/1528",
        holder: "ORG-100030215",
        primary_series: 2,
    },
    VaccineCodes {
        vaccine_code: "207",
        prophylaxis: MRNA,
        product: "EU/1/20/1507",
        holder: "ORG-100031184",
        primary_series: 2,
    },
    VaccineCodes {
        vaccine_code: "210",
        prophylaxis: COVID19_VACCINES,
        product: "EU/1/21/1529",
        holder: "ORG-100001699",
        primary_series: 2,
    },
    VaccineCodes {
        vaccine_code: "510",
        prophylaxis: COVID19_VACCINES,
        product: "BBIBP-CorV",
        holder: "ORG-100020693",
        primary_series: 2,
    },
    VaccineCodes {
        vaccine_code: "511",
        prophylaxis: COVID19_VACCINES,
        product: "CoronaVac",
        holder: "Sinovac-Biotech",
        primary_series: 2,
    },
];

/// The codes of a stored vaccine code.
pub fn lookup(vaccine_code: &str) -> Option<&'static VaccineCodes> {
    VACCINES.iter().find(|v| v.vaccine_code == vaccine_code)
}
