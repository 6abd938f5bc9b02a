//! TODO stage: server
