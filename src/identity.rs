//! TODO stage: identity
