//! Durable state of a stillpoint agent, on sled (being written; see issue 2).

mod state;

pub mod journal;
pub use state::StateMachineData;
