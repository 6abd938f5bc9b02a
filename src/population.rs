//! TODO stage: population
