//! Addresses: real province, district and ward names (the five cities in detail, every other province by
//! its capital) with synthetic house numbers and streets.

use serde_json::{json, Value};

use super::draw::pick;
use crate::citizen_id::provinces;

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

fn province_full_name(code: &str, name: &str) -> String {
    if CITY_DISTRICTS.iter().any(|(c, _)| *c == code) {
        format!("Thành phố {name}")
    } else {
        format!("Tỉnh {name}")
    }
}

pub(super) fn address(rng: &mut fastrand::Rng, province: usize) -> Value {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
