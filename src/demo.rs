//! TODO stage: demo
