//! TODO stage: admin
