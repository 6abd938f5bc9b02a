//! TODO stage: client
