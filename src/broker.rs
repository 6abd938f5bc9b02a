//! TODO stage: broker
