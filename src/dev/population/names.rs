//! Vietnamese names with diacritics: family names by frequency, middle and given names by gender.

use super::draw::{pick, pick_weighted};
use crate::citizen_id::Gender;

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

/// A full name that fits `gender`: family, one middle name (sometimes two), given name.
pub(super) fn full_name(rng: &mut fastrand::Rng, gender: Gender) -> String {
    let (middle, given) = match gender {
        Gender::Male => (&MIDDLE_MALE[..], &GIVEN_MALE[..]),
        Gender::Female => (&MIDDLE_FEMALE[..], &GIVEN_FEMALE[..]),
    };
    let family = pick_weighted(rng, &FAMILY);
    if rng.u8(..8) == 0 {
        // A double middle name, e.g. "Nguyễn Thị Ngọc Hương".
        let a = pick(rng, middle);
        let mut b = pick(rng, middle);
        while b == a {
            b = pick(rng, middle);
        }
        format!("{family} {a} {b} {}", pick(rng, given))
    } else {
        format!("{family} {} {}", pick(rng, middle), pick(rng, given))
    }
}
