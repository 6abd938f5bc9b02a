//! TODO stage: tls
