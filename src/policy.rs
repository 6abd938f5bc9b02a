//! TODO stage: policy
