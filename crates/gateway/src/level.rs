//! Sensitivity levels and backend clearances: `public < internal < confidential < restricted`. The
//! scanner owns the type; the gateway uses the same one for clearances.

pub use sluice_sensitivity::{Level, UnknownLevel};
