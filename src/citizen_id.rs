//! TODO stage: citizen_id
