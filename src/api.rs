//! TODO stage: api
