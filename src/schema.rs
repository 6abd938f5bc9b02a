//! TODO stage: schema
