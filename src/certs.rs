//! TODO stage: certs
