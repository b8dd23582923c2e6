//! Stead's domain: ids, agent specs, the event log's types and hash chain, and the pure
//! parts of the agent loop (`fold`, `decide`, context building). No I/O lives here.

pub mod agent;
pub mod approval;
pub mod context;
pub mod error;
pub mod event;
pub mod grants;
pub mod ids;
pub mod message;
pub mod run;
pub mod spec_depth;
pub mod time;

pub use error::{Error, Result};
