//! What both Toolsmith binaries need: the tool model, the job protocol, the registry and
//! queue traits with their implementations, configuration pieces and telemetry.

pub mod code;
pub mod config;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod secrets;
pub mod signals;
pub mod telemetry;
pub mod time;
