//! The three hand-picked records at the head of every population (the documented `SAMPLE_CITIZENS`).

use serde_json::{json, Value};

use super::generator::phone;
use super::SAMPLE_CITIZENS;

/// The three hand-picked records at the head of every population.
pub(super) fn fixed_record(index: usize) -> Option<Value> {
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
