//! TODO stage: registry
