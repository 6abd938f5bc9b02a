//! Stage: route to a front door. Each door turns the requests of one channel into canonical operations
//! (`canonical`: authorize → meter → store → release) and their answers back into the channel's form. A door
//! calls no other door and nothing of the admin side (X-Road is an envelope: a service mapped to a connector runs
//! that connector's door inside it); what a door keeps between requests (connector files,
//! the X-Road service map, the DCC signer, registered checkpoints) is loaded below the broker, in the
//! module of its format (`connector`, `xroad_id`, `dcc`, `checkpoint`).

pub mod api;
pub mod checkpoint;
pub mod connector;
pub mod sms;
pub mod xroad;
