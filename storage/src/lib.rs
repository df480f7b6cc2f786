//! Durable state of a stillpoint agent, on sled.
//!
//! (Essay in progress; see the CAVEATS below.)

mod codec;
mod error;
mod log_store;
mod state;
mod state_machine;
mod store;
mod tuning;

pub mod journal;

pub use error::Error;
pub use log_store::LogStore;
pub use state::StateMachineData;
pub use state_machine::{SNAPSHOT_FORMAT_VERSION, StateMachineStore};
pub use store::{DataDirIdentity, Store, StoreTypeConfig};
