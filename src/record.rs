//! TODO stage: record
