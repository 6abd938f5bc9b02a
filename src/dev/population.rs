//! Stage: demo and benchmark data. A synthetic, deterministic population of canonical citizen records:
//! the same `(count, seed)` always yields the same records. Every person is invented; any resemblance to
//! a real citizen is chance.
//!
//! What holds for every record:
//! - the ID is valid ([`CitizenId::parse`]), unique, and consistent with the birth date (1930–2015) and
//!   gender; serials are unique per (province, century/gender digit, birth year), scrambled so they look
//!   real;
//! - names are Vietnamese with diacritics (NFC), middle names fit the gender;
//! - addresses use real province, district and ward names with synthetic house numbers (no
//!   `admin_unit_code`: the generator does not invent official codes);
//! - phones `+849xxxxxxxx` are unique (everyone born 2010 or earlier has one); children too young for
//!   a card have no `id_card_issue_date`, which is always on or after the 14th birthday (and in
//!   2016–mid 2024);
//! - about 70% have 1–3 vaccinations dated 2021, some have test results (2021–2022) and recoveries;
//!   every `source_record_id` is unique (`moh-imm-<id>-<n>`, `moh-lab-<id>-<n>`, `moh-f0-<id>-<n>`).
//!
//! The first three records never depend on the seed; they are the documented [`SAMPLE_CITIZENS`]:
//!
//! | ID | name | born | province | history |
//! |---|---|---|---|---|
//! | `001090000001` | Nguyễn Văn An | 1990-05-20, male | Hà Nội | 2 doses (Jul/Oct 2021) |
//! | `079195000002` | Trần Thị Bình | 1995-03-14, female | Hồ Chí Minh | 1 dose (Aug 2021) |
//! | `048203000003` | Lê Minh Châu | 2003-11-02, male | Đà Nẵng | no vaccination, 1 negative PCR (Oct 2021) |

use chrono::{Days, Months, NaiveDate};
use serde_json::{json, Map, Value};

use crate::citizen_id::{provinces, CitizenId, Gender};
use crate::qr::{self, CccdQr};

/// The first three generated IDs, the same for every seed (see the module docs for who they are).
pub const SAMPLE_CITIZENS: [&str; 3] = ["001090000001", "079195000002", "048203000003"];

/// `count` records, deterministic in `seed`. Stops early only past ~10¹⁰ records, when no unique ID is
/// left.
pub fn generate(count: usize, seed: u64) -> impl Iterator<Item = Value> {
    let mut g = Generator::new(seed);
    (0..count).map_while(move |i| g.record(i))
}

/// The CCCD QR payload (7-field form) the record's ID card would carry; `None` when the record has no
/// card (`id_card_issue_date` absent) or lacks a field the QR needs.
pub fn qr_payload(record: &Value) -> Option<String> {
    let text = |k: &str| record.get(k).and_then(Value::as_str);
    let date = |k: &str| text(k).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
    let gender = match text("gender")? {
        "male" => Gender::Male,
        "female" => Gender::Female,
        _ => return None,
    };
    let addr = record.get("permanent_address")?;
    let permanent_address = ["detail", "ward", "district", "province"]
        .iter()
        .filter_map(|k| addr.get(*k).and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    let qr = CccdQr {
        citizen_id: CitizenId::parse(text("citizen_id")?).ok()?,
        old_id_number: text("old_id_number").map(str::to_owned),
        full_name: text("full_name")?.to_owned(),
        birth_date: date("birth_date")?,
        gender,
        permanent_address,
        issue_date: date("id_card_issue_date")?,
    };
    Some(qr::encode(&qr))
}

const FAMILY: [(&str, u32); 16] = [
    ("Nguyễn", 380),
    ("Trần", 110),
    ("Lê", 95),
    ("Phạm", 70),
    ("Hoàng", 30),
    ("Huỳnh", 21),
    ("Phan", 45),
    ("Vũ", 20),
    ("Võ", 19),
    ("Đặng", 21),
    ("Bùi", 20),
    ("Đỗ", 14),
    ("Hồ", 13),
    ("Ngô", 13),
    ("Dương", 10),
    ("Lý", 5),
];
const MIDDLE_MALE: [&str; 10] = [
    "Văn", "Hữu", "Đức", "Minh", "Quốc", "Thành", "Công", "Gia", "Hoàng", "Anh",
];
const MIDDLE_FEMALE: [&str; 10] = [
    "Thị", "Ngọc", "Thu", "Thanh", "Bảo", "Mỹ", "Phương", "Kim", "Minh", "Hồng",
];
const GIVEN_MALE: [&str; 20] = [
    "An", "Bình", "Dũng", "Hùng", "Khánh", "Nam", "Phúc", "Quang", "Tuấn", "Long", "Hải", "Sơn", "Thắng",
    "Trung", "Vinh", "Đạt", "Hiếu", "Huy", "Minh", "Tâm",
];
const GIVEN_FEMALE: [&str; 20] = [
    "An", "Châu", "Hạnh", "Hương", "Linh", "Mai", "Thảo", "Trang", "Yến", "Lan", "Hoa", "Ngân", "Nhung",
    "Phương", "Thủy", "Vy", "Hằng", "Nga", "Quyên", "Khánh",
];
const STREETS: [&str; 16] = [
    "Lê Lợi",
    "Trần Hưng Đạo",
    "Nguyễn Huệ",
    "Hai Bà Trưng",
    "Lý Thường Kiệt",
    "Quang Trung",
    "Nguyễn Trãi",
    "Lê Duẩn",
    "Điện Biên Phủ",
    "Hùng Vương",
    "Phan Đình Phùng",
    "Trần Phú",
    "Nguyễn Văn Cừ",
    "Võ Thị Sáu",
    "Bạch Đằng",
    "Lê Thánh Tông",
];
/// Ward names found in many provincial cities.
const COMMON_WARDS: [&str; 10] = [
    "Phường Trần Phú",
    "Phường Quang Trung",
    "Phường Lê Lợi",
    "Phường Hoàng Văn Thụ",
    "Phường Minh Khai",
    "Phường Tân Thịnh",
    "Phường Phan Chu Trinh",
    "Phường Nguyễn Trãi",
    "Phường 1",
    "Phường 2",
];

type District = (&'static str, &'static [&'static str]);

/// Districts and wards of the five centrally-run cities, by province code.
const CITY_DISTRICTS: [(&str, &[District]); 5] = [
    (
        "001",
        &[
            (
                "Quận Ba Đình",
                &[
                    "Phường Phúc Xá",
                    "Phường Trúc Bạch",
                    "Phường Kim Mã",
                    "Phường Giảng Võ",
                    "Phường Ngọc Hà",
                ],
            ),
            (
                "Quận Hoàn Kiếm",
                &[
                    "Phường Hàng Bạc",
                    "Phường Hàng Trống",
                    "Phường Tràng Tiền",
                    "Phường Cửa Nam",
                    "Phường Lý Thái Tổ",
                ],
            ),
            (
                "Quận Đống Đa",
                &[
                    "Phường Văn Miếu",
                    "Phường Quốc Tử Giám",
                    "Phường Láng Thượng",
                    "Phường Ô Chợ Dừa",
                    "Phường Kim Liên",
                ],
            ),
            (
                "Quận Cầu Giấy",
                &[
                    "Phường Dịch Vọng",
                    "Phường Nghĩa Đô",
                    "Phường Quan Hoa",
                    "Phường Yên Hòa",
                    "Phường Mai Dịch",
                ],
            ),
            (
                "Huyện Gia Lâm",
                &["Thị trấn Trâu Quỳ", "Xã Bát Tràng", "Xã Đa Tốn", "Xã Kiêu Kỵ"],
            ),
        ],
    ),
    (
        "031",
        &[
            (
                "Quận Hồng Bàng",
                &["Phường Hoàng Văn Thụ", "Phường Minh Khai", "Phường Phan Bội Châu"],
            ),
            (
                "Quận Lê Chân",
                &["Phường An Biên", "Phường Dư Hàng", "Phường Trại Cau"],
            ),
            (
                "Quận Ngô Quyền",
                &["Phường Máy Tơ", "Phường Lạch Tray", "Phường Đông Khê"],
            ),
        ],
    ),
    (
        "048",
        &[
            (
                "Quận Hải Châu",
                &[
                    "Phường Thạch Thang",
                    "Phường Phước Ninh",
                    "Phường Hòa Thuận Đông",
                    "Phường Bình Hiên",
                ],
            ),
            (
                "Quận Thanh Khê",
                &["Phường Tam Thuận", "Phường Xuân Hà", "Phường Chính Gián"],
            ),
            (
                "Quận Sơn Trà",
                &["Phường An Hải Bắc", "Phường Phước Mỹ", "Phường Mân Thái"],
            ),
            (
                "Quận Ngũ Hành Sơn",
                &["Phường Mỹ An", "Phường Khuê Mỹ", "Phường Hòa Hải"],
            ),
            ("Huyện Hòa Vang", &["Xã Hòa Phong", "Xã Hòa Tiến"]),
        ],
    ),
    (
        "079",
        &[
            (
                "Quận 1",
                &[
                    "Phường Bến Nghé",
                    "Phường Bến Thành",
                    "Phường Đa Kao",
                    "Phường Tân Định",
                    "Phường Cầu Ông Lãnh",
                ],
            ),
            (
                "Quận 3",
                &["Phường Võ Thị Sáu", "Phường 9", "Phường 11", "Phường 14"],
            ),
            ("Quận 5", &["Phường 1", "Phường 5", "Phường 11", "Phường 14"]),
            (
                "Quận Bình Thạnh",
                &["Phường 1", "Phường 15", "Phường 22", "Phường 25"],
            ),
            (
                "Thành phố Thủ Đức",
                &[
                    "Phường An Phú",
                    "Phường Thảo Điền",
                    "Phường Linh Trung",
                    "Phường Hiệp Bình Chánh",
                ],
            ),
            (
                "Huyện Củ Chi",
                &["Thị trấn Củ Chi", "Xã Tân Thạnh Đông", "Xã Phước Vĩnh An"],
            ),
        ],
    ),
    (
        "092",
        &[
            (
                "Quận Ninh Kiều",
                &[
                    "Phường Tân An",
                    "Phường An Hòa",
                    "Phường Xuân Khánh",
                    "Phường Hưng Lợi",
                ],
            ),
            ("Quận Cái Răng", &["Phường Lê Bình", "Phường Hưng Phú"]),
            ("Quận Bình Thủy", &["Phường An Thới", "Phường Bình Thủy"]),
        ],
    ),
];

/// The provincial capital of every other province, in the order of [`provinces`] (cities skipped).
const CAPITALS: [(&str, &str); 58] = [
    ("002", "Thành phố Hà Giang"),
    ("004", "Thành phố Cao Bằng"),
    ("006", "Thành phố Bắc Kạn"),
    ("008", "Thành phố Tuyên Quang"),
    ("010", "Thành phố Lào Cai"),
    ("011", "Thành phố Điện Biên Phủ"),
    ("012", "Thành phố Lai Châu"),
    ("014", "Thành phố Sơn La"),
    ("015", "Thành phố Yên Bái"),
    ("017", "Thành phố Hòa Bình"),
    ("019", "Thành phố Thái Nguyên"),
    ("020", "Thành phố Lạng Sơn"),
    ("022", "Thành phố Hạ Long"),
    ("024", "Thành phố Bắc Giang"),
    ("025", "Thành phố Việt Trì"),
    ("026", "Thành phố Vĩnh Yên"),
    ("027", "Thành phố Bắc Ninh"),
    ("030", "Thành phố Hải Dương"),
    ("033", "Thành phố Hưng Yên"),
    ("034", "Thành phố Thái Bình"),
    ("035", "Thành phố Phủ Lý"),
    ("036", "Thành phố Nam Định"),
    ("037", "Thành phố Ninh Bình"),
    ("038", "Thành phố Thanh Hóa"),
    ("040", "Thành phố Vinh"),
    ("042", "Thành phố Hà Tĩnh"),
    ("044", "Thành phố Đồng Hới"),
    ("045", "Thành phố Đông Hà"),
    ("046", "Thành phố Huế"),
    ("049", "Thành phố Tam Kỳ"),
    ("051", "Thành phố Quảng Ngãi"),
    ("052", "Thành phố Quy Nhơn"),
    ("054", "Thành phố Tuy Hòa"),
    ("056", "Thành phố Nha Trang"),
    ("058", "Thành phố Phan Rang - Tháp Chàm"),
    ("060", "Thành phố Phan Thiết"),
    ("062", "Thành phố Kon Tum"),
    ("064", "Thành phố Pleiku"),
    ("066", "Thành phố Buôn Ma Thuột"),
    ("067", "Thành phố Gia Nghĩa"),
    ("068", "Thành phố Đà Lạt"),
    ("070", "Thành phố Đồng Xoài"),
    ("072", "Thành phố Tây Ninh"),
    ("074", "Thành phố Thủ Dầu Một"),
    ("075", "Thành phố Biên Hòa"),
    ("077", "Thành phố Vũng Tàu"),
    ("080", "Thành phố Tân An"),
    ("082", "Thành phố Mỹ Tho"),
    ("083", "Thành phố Bến Tre"),
    ("084", "Thành phố Trà Vinh"),
    ("086", "Thành phố Vĩnh Long"),
    ("087", "Thành phố Cao Lãnh"),
    ("089", "Thành phố Long Xuyên"),
    ("091", "Thành phố Rạch Giá"),
    ("093", "Thành phố Vị Thanh"),
    ("094", "Thành phố Sóc Trăng"),
    ("095", "Thành phố Bạc Liêu"),
    ("096", "Thành phố Cà Mau"),
];

/// (CVX or local code, name, weight).
const VACCINES: [(&str, &str, u32); 5] = [
    ("208", "Comirnaty (Pfizer-BioNTech)", 30),
    ("207", "Spikevax (Moderna)", 12),
    ("210", "Vaxzevria (AstraZeneca)", 25),
    ("510", "Sinopharm BIBP", 30),
    ("511", "CoronaVac (Sinovac)", 3),
];

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

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    // Only called with constant, valid dates.
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

fn iso(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

fn pick_weighted<'a, T>(rng: &mut fastrand::Rng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut r = rng.u32(..total);
    for (item, w) in items {
        if r < *w {
            return item;
        }
        r -= w;
    }
    &items[items.len() - 1].0
}

/// The phone number on the record of `SAMPLE_CITIZENS[i]` (`+84931415926` for `001090000001`): the SMS
/// examples in the demo banner and the README use it.
pub fn sample_phone(i: usize) -> Option<String> {
    phone(i)
}

fn phone(index: usize) -> Option<String> {
    let i = u64::try_from(index).ok().filter(|i| *i < PHONE_SPACE)?;
    Some(format!(
        "+849{:08}",
        (i * PHONE_MULTIPLIER + PHONE_OFFSET) % PHONE_SPACE
    ))
}

fn province_full_name(code: &str, name: &str) -> String {
    if CITY_DISTRICTS.iter().any(|(c, _)| *c == code) {
        format!("Thành phố {name}")
    } else {
        format!("Tỉnh {name}")
    }
}

fn address(rng: &mut fastrand::Rng, province: usize) -> Value {
    let (code, name) = provinces()[province];
    let (district, ward) = match CITY_DISTRICTS.iter().find(|(c, _)| *c == code) {
        Some((_, districts)) => {
            let (d, wards) = pick(rng, districts);
            (*d, *pick(rng, wards))
        }
        None => {
            let d = CAPITALS
                .iter()
                .find(|(c, _)| *c == code)
                .map_or("Thành phố", |(_, d)| *d);
            (d, *pick(rng, &COMMON_WARDS))
        }
    };
    // Rural addresses name a hamlet, and alleys have their own word: north vs south.
    let north = code < "046";
    let detail = if ward.starts_with("Xã") {
        format!("{} {}", if north { "Thôn" } else { "Ấp" }, rng.u32(1..=12))
    } else if rng.u8(..4) == 0 {
        let alley = if north { "ngõ" } else { "hẻm" };
        format!(
            "Số {}, {alley} {}, {}",
            rng.u32(1..=80),
            rng.u32(1..=200),
            pick(rng, &STREETS)
        )
    } else {
        format!("{} {}", rng.u32(1..=400), pick(rng, &STREETS))
    };
    json!({
        "detail": detail,
        "ward": ward,
        "district": district,
        "province": province_full_name(code, name),
        "country": "VN",
    })
}

/// Keeps per-(province, century/gender digit, birth year) counters so every ID is unique.
struct Generator {
    rng: fastrand::Rng,
    /// Next serial counter per bucket, indexed `(province * 4 + g) * YEARS + year offset`.
    counters: Vec<u32>,
    /// Province indices of Hà Nội and Hồ Chí Minh, drawn more often.
    big: [usize; 2],
}

impl Generator {
    fn new(seed: u64) -> Self {
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

    fn record(&mut self, index: usize) -> Option<Value> {
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
        let (middle, given) = match gender {
            Gender::Male => (&MIDDLE_MALE[..], &GIVEN_MALE[..]),
            Gender::Female => (&MIDDLE_FEMALE[..], &GIVEN_FEMALE[..]),
        };
        let family = pick_weighted(rng, &FAMILY);
        let full_name = if rng.u8(..8) == 0 {
            // A double middle name, e.g. "Nguyễn Thị Ngọc Hương".
            let a = pick(rng, middle);
            let mut b = pick(rng, middle);
            while b == a {
                b = pick(rng, middle);
            }
            format!("{family} {a} {b} {}", pick(rng, given))
        } else {
            format!("{family} {} {}", pick(rng, middle), pick(rng, given))
        };
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

fn vaccinations(rng: &mut fastrand::Rng, id: &CitizenId, ward: &str) -> Vec<Value> {
    let doses = match rng.u8(..10) {
        0 | 1 => 1,
        2..=6 => 2,
        _ => 3,
    };
    let end_of_2021 = ymd(2021, 12, 31);
    // Vietnam's campaign began on 8 March 2021.
    let mut date = ymd(2021, 3, 8) + Days::new(rng.u64(0..240));
    let first = pick_weighted(rng, &[(0usize, 30), (1, 12), (2, 25), (3, 30), (4, 3)]);
    let mut out = Vec::with_capacity(doses);
    for dose in 1..=doses {
        if date > end_of_2021 {
            break;
        }
        // The booster is an mRNA vaccine; the first two doses match.
        let v = if dose == 3 { rng.usize(..2) } else { *first };
        let (code, name, _) = VACCINES[v];
        let lot = format!(
            "{}{}{:04}",
            char::from(b'A' + rng.u8(..26)),
            char::from(b'A' + rng.u8(..26)),
            rng.u16(..10_000)
        );
        out.push(json!({
            "dose_number": dose,
            "vaccine_code": code,
            "vaccine_name": name,
            "date": iso(date),
            "lot": lot,
            "site": format!("Trạm Y tế {ward}"),
            "source_record_id": format!("moh-imm-{id}-{dose}"),
        }));
        date = date + Days::new(rng.u64(28..=90));
    }
    out
}

fn tests_and_recoveries(rng: &mut fastrand::Rng, id: &CitizenId) -> (Vec<Value>, Vec<Value>) {
    let mut tests = Vec::new();
    let mut recoveries = Vec::new();
    let start = ymd(2021, 6, 1);
    for n in 1..=rng.usize(1..=2) {
        let day = start + Days::new(rng.u64(0..300));
        let (h, m) = (rng.u8(6..20), rng.u8(..60));
        let positive = rng.u8(..100) < 15;
        tests.push(json!({
            "date": format!("{}T{h:02}:{m:02}:00Z", iso(day)),
            "kind": if rng.u8(..10) < 4 { "pcr" } else { "rapid_antigen" },
            "result": if positive { "positive" } else { "negative" },
            "source_record_id": format!("moh-lab-{id}-{n}"),
        }));
        if positive && rng.u8(..10) < 7 {
            let k = recoveries.len() + 1;
            recoveries.push(json!({
                "recovered_on": iso(day + Days::new(rng.u64(10..=21))),
                "source_record_id": format!("moh-f0-{id}-{k}"),
            }));
        }
    }
    (tests, recoveries)
}

/// The three hand-picked records at the head of every population.
fn fixed_record(index: usize) -> Option<Value> {
    let r = match index {
        0 => json!({
            "citizen_id": SAMPLE_CITIZENS[0],
            "old_id_number": "012345678",
            "full_name": "Nguyễn Văn An",
            "birth_date": "1990-05-20",
            "gender": "male",
            "permanent_address": {
                "detail": "15 Tràng Tiền", "ward": "Phường Tràng Tiền", "district": "Quận Hoàn Kiếm",
                "province": "Thành phố Hà Nội", "country": "VN"
            },
            "id_card_issue_date": "2021-05-04",
            "phone": phone(0),
            "vaccinations": [
                { "dose_number": 1, "vaccine_code": "210", "vaccine_name": "Vaxzevria (AstraZeneca)",
                  "date": "2021-07-15", "lot": "NJ0342", "site": "Trạm Y tế Phường Tràng Tiền",
                  "source_record_id": format!("moh-imm-{}-1", SAMPLE_CITIZENS[0]) },
                { "dose_number": 2, "vaccine_code": "210", "vaccine_name": "Vaxzevria (AstraZeneca)",
                  "date": "2021-10-07", "lot": "NJ0517", "site": "Trạm Y tế Phường Tràng Tiền",
                  "source_record_id": format!("moh-imm-{}-2", SAMPLE_CITIZENS[0]) }
            ],
            "test_results": [],
            "recoveries": []
        }),
        1 => json!({
            "citizen_id": SAMPLE_CITIZENS[1],
            "old_id_number": "025123456",
            "full_name": "Trần Thị Bình",
            "birth_date": "1995-03-14",
            "gender": "female",
            "permanent_address": {
                "detail": "12 Lê Lợi", "ward": "Phường Bến Nghé", "district": "Quận 1",
                "province": "Thành phố Hồ Chí Minh", "country": "VN"
            },
            "id_card_issue_date": "2021-04-10",
            "phone": phone(1),
            "vaccinations": [
                { "dose_number": 1, "vaccine_code": "208", "vaccine_name": "Comirnaty (Pfizer-BioNTech)",
                  "date": "2021-08-01", "lot": "FF1234", "site": "Trạm Y tế Phường Bến Nghé",
                  "source_record_id": format!("moh-imm-{}-1", SAMPLE_CITIZENS[1]) }
            ],
            "test_results": [],
            "recoveries": []
        }),
        2 => json!({
            "citizen_id": SAMPLE_CITIZENS[2],
            "full_name": "Lê Minh Châu",
            "birth_date": "2003-11-02",
            "gender": "male",
            "permanent_address": {
                "detail": "27 Bạch Đằng", "ward": "Phường Thạch Thang", "district": "Quận Hải Châu",
                "province": "Thành phố Đà Nẵng", "country": "VN"
            },
            "id_card_issue_date": "2021-06-15",
            "phone": phone(2),
            "vaccinations": [],
            "test_results": [
                { "date": "2021-10-01T08:00:00Z", "kind": "pcr", "result": "negative",
                  "source_record_id": format!("moh-lab-{}-1", SAMPLE_CITIZENS[2]) }
            ],
            "recoveries": []
        }),
        _ => return None,
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use chrono::Datelike;
    use unicode_normalization::UnicodeNormalization;

    use super::*;
    use crate::citizen_id::check_consistency;

    fn date(v: &Value) -> NaiveDate {
        NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn subset(v: &Value, allowed: &[&str]) -> bool {
        keys(v).iter().all(|k| allowed.contains(k))
    }

    /// The record spec, checked by hand (the schema module is someone else's stage).
    fn check_record(r: &Value) {
        assert!(subset(
            r,
            &[
                "citizen_id",
                "old_id_number",
                "full_name",
                "birth_date",
                "gender",
                "permanent_address",
                "current_address",
                "id_card_issue_date",
                "phone",
                "vaccinations",
                "test_results",
                "recoveries",
            ]
        ));
        let id = CitizenId::parse(r["citizen_id"].as_str().unwrap()).unwrap();
        let birth = date(&r["birth_date"]);
        let gender: Gender = serde_json::from_value(r["gender"].clone()).unwrap();
        check_consistency(&id, birth, gender).unwrap();
        assert!((1930..=2015).contains(&birth.year()));
        let name = r["full_name"].as_str().unwrap();
        assert_eq!(name.nfc().collect::<String>(), name);
        assert!((1..=100).contains(&name.chars().count()));
        if let Some(old) = r.get("old_id_number") {
            let old = old.as_str().unwrap();
            assert!(old.len() == 9 && old.bytes().all(|b| b.is_ascii_digit()));
        }
        for a in ["permanent_address", "current_address"] {
            if let Some(a) = r.get(a) {
                assert!(subset(
                    a,
                    &[
                        "detail",
                        "ward",
                        "district",
                        "province",
                        "admin_unit_code",
                        "country"
                    ]
                ));
                assert!(!a["detail"].as_str().unwrap().is_empty());
                assert!(!a["province"].as_str().unwrap().is_empty());
            }
        }
        if let Some(d) = r.get("id_card_issue_date") {
            assert!(
                date(d) >= birth.checked_add_months(Months::new(168)).unwrap(),
                "{r}"
            );
        }
        if let Some(p) = r.get("phone") {
            let p = p.as_str().unwrap();
            assert!(p.len() == 12 && p.starts_with("+84") && p[3..].bytes().all(|b| b.is_ascii_digit()));
        }
        for v in r["vaccinations"].as_array().unwrap() {
            assert!(subset(
                v,
                &[
                    "dose_number",
                    "vaccine_code",
                    "vaccine_name",
                    "date",
                    "lot",
                    "site",
                    "source_record_id"
                ]
            ));
            assert!((1..=10).contains(&v["dose_number"].as_u64().unwrap()));
            assert!(VACCINES
                .iter()
                .any(|(c, n, _)| v["vaccine_code"] == *c && v["vaccine_name"] == *n));
            assert_eq!(date(&v["date"]).year(), 2021);
            assert!((1..=64).contains(&v["lot"].as_str().unwrap().len()));
        }
        for t in r["test_results"].as_array().unwrap() {
            assert!(subset(t, &["date", "kind", "result", "source_record_id"]));
            chrono::DateTime::parse_from_rfc3339(t["date"].as_str().unwrap()).unwrap();
            assert!(t["kind"] == "pcr" || t["kind"] == "rapid_antigen");
            assert!(t["result"] == "negative" || t["result"] == "positive");
        }
        for c in r["recoveries"].as_array().unwrap() {
            assert!(subset(c, &["recovered_on", "source_record_id"]));
            date(&c["recovered_on"]);
        }
    }

    fn source_ids(r: &Value) -> Vec<String> {
        ["vaccinations", "test_results", "recoveries"]
            .iter()
            .flat_map(|k| r[*k].as_array().unwrap().iter())
            .map(|e| e["source_record_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn first_three_are_the_samples_for_any_seed() {
        for seed in [0, 1, 42, u64::MAX] {
            let head: Vec<Value> = generate(3, seed).collect();
            let ids: Vec<&str> = head.iter().map(|r| r["citizen_id"].as_str().unwrap()).collect();
            assert_eq!(ids, SAMPLE_CITIZENS);
            assert_eq!(head[0]["full_name"], "Nguyễn Văn An");
            assert_eq!(head[0]["vaccinations"].as_array().unwrap().len(), 2);
            assert_eq!(head[1]["full_name"], "Trần Thị Bình");
            assert_eq!(head[1]["gender"], "female");
            assert_eq!(head[1]["vaccinations"].as_array().unwrap().len(), 1);
            assert_eq!(head[2]["full_name"], "Lê Minh Châu");
            assert_eq!(head[2]["vaccinations"].as_array().unwrap().len(), 0);
            assert_eq!(head[2]["test_results"][0]["result"], "negative");
            for r in &head {
                check_record(r);
            }
        }
        assert_eq!(generate(0, 1).count(), 0);
        assert_eq!(generate(2, 1).count(), 2);
    }

    #[test]
    fn sample_qr_payload() {
        let binh = generate(2, 0).nth(1).unwrap();
        assert_eq!(
            qr_payload(&binh).unwrap(),
            "079195000002|025123456|Trần Thị Bình|14031995|Nữ|12 Lê Lợi, Phường Bến Nghé, Quận 1, Thành phố Hồ Chí Minh|10042021"
        );
        assert_eq!(qr_payload(&json!({})), None);
        assert_eq!(qr_payload(&json!("079195000002")), None);
    }

    #[test]
    fn twenty_thousand_valid_unique_and_qr_consistent() {
        let records: Vec<Value> = generate(20_000, 2021).collect();
        assert_eq!(records.len(), 20_000);
        let mut ids = HashSet::new();
        let mut phones = HashSet::new();
        let mut sources = HashSet::new();
        let (mut vaccinated, mut with_card, mut tested, mut recovered, mut phoned) = (0, 0, 0, 0, 0);
        for r in &records {
            check_record(r);
            assert!(
                ids.insert(r["citizen_id"].as_str().unwrap().to_owned()),
                "duplicate ID {}",
                r["citizen_id"]
            );
            if let Some(p) = r.get("phone") {
                phoned += 1;
                assert!(
                    phones.insert(p.as_str().unwrap().to_owned()),
                    "duplicate phone {p}"
                );
            }
            for s in source_ids(r) {
                assert!(sources.insert(s.clone()), "duplicate source_record_id {s}");
            }
            vaccinated += usize::from(!r["vaccinations"].as_array().unwrap().is_empty());
            tested += usize::from(!r["test_results"].as_array().unwrap().is_empty());
            recovered += usize::from(!r["recoveries"].as_array().unwrap().is_empty());

            match qr_payload(r) {
                None => assert!(r.get("id_card_issue_date").is_none()),
                Some(p) => {
                    with_card += 1;
                    let q = qr::parse(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
                    assert_eq!(q.citizen_id.as_str(), r["citizen_id"]);
                    assert_eq!(
                        q.old_id_number.as_deref(),
                        r.get("old_id_number").and_then(Value::as_str)
                    );
                    assert!(qr::names_match(&q.full_name, r["full_name"].as_str().unwrap()));
                    assert_eq!(q.birth_date, date(&r["birth_date"]));
                    assert_eq!(q.gender.as_str(), r["gender"]);
                    assert_eq!(q.issue_date, date(&r["id_card_issue_date"]));
                    let a = &r["permanent_address"];
                    assert!(q.permanent_address.starts_with(a["detail"].as_str().unwrap()));
                    assert!(q.permanent_address.ends_with(a["province"].as_str().unwrap()));
                }
            }
        }
        let pct = |n: usize| n * 100 / records.len();
        assert!(
            (65..=75).contains(&pct(vaccinated)),
            "vaccinated {}%",
            pct(vaccinated)
        );
        assert!(pct(with_card) >= 80, "with card {}%", pct(with_card));
        assert!(pct(phoned) >= 90, "with phone {}%", pct(phoned));
        assert!((5..=20).contains(&pct(tested)), "tested {}%", pct(tested));
        assert!(recovered > 0);
    }

    #[test]
    fn deterministic_per_seed() {
        let a: Vec<Value> = generate(2_000, 7).collect();
        let b: Vec<Value> = generate(2_000, 7).collect();
        assert_eq!(a, b);
        let c: Vec<Value> = generate(2_000, 8).collect();
        assert_eq!(a[..3], c[..3]);
        assert_ne!(a[3..], c[3..]);
        // A shorter run is a prefix of a longer one.
        let short: Vec<Value> = generate(500, 7).collect();
        assert_eq!(short[..], a[..500]);
    }

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

    #[test]
    fn tables_are_consistent() {
        for (code, districts) in CITY_DISTRICTS {
            assert!(crate::citizen_id::province_name(code).is_some());
            assert!(!districts.is_empty() && districts.iter().all(|(_, w)| !w.is_empty()));
        }
        assert_eq!(CAPITALS.len() + CITY_DISTRICTS.len(), provinces().len());
        for (code, _) in provinces() {
            let covered =
                CAPITALS.iter().any(|(c, _)| c == code) || CITY_DISTRICTS.iter().any(|(c, _)| c == code);
            assert!(covered, "{code}");
        }
    }
}
