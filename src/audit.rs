//! TODO stage: audit
