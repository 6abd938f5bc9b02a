//! TODO stage: qr
