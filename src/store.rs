//! TODO stage: store
