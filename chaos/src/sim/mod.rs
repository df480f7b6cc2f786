//! The deterministic layer: one seeded run of a simulated site, its cluster and its jobs,
//! judged by checkers that read only the simulated world's own records.
//!
//! A run ([`run`]) draws a site ([`site::Site::draw`]), submits jobs through the simulated
//! leader, and strikes faults for [`RunConfig::fault_ms`] of virtual time (the fault phase:
//! safety must hold at every instant); then every fault is removed (the heal phase) and the
//! run continues until every accepted job has ended, or fails S7 after
//! [`RunConfig::heal_ms_max`]. Nothing reads a clock, spawns a thread or does I/O; every
//! choice comes from one [`rng::Rng`] in event order, so a seed replays byte for byte.

mod check;
mod driver;
mod engine;
pub mod executor;
pub mod rng;
pub mod site;
mod summary;
pub mod world;

pub use engine::run;
pub use summary::Summary;
pub use world::{Prop, Violation};

use std::collections::BTreeMap;

/// Switches that break the system on purpose, to prove the checkers can fail. Tests only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// The new leader's driver records no takeover (no step is marked unknown or asked about
    /// before it is sent again).
    pub skip_takeover: bool,
    /// Hosts answer every release "held throughout", so labels lose the held-throughout check.
    pub host_claims_held: bool,
    /// Executors keep no fences: a stale token is executed.
    pub no_fencing: bool,
}

/// How a run is shaped.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub site: site::SiteConfig,
    /// Virtual length of the fault phase.
    pub fault_ms: u64,
    /// Bound of the heal phase: every accepted job must have ended within it (S7).
    pub heal_ms_max: u64,
    /// Jobs submitted per run, at least 1.
    pub jobs_max: u32,
    pub mutations: Mutations,
    /// Keep a readable timeline (slower; used to replay one seed).
    pub trace: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            site: site::SiteConfig::default(),
            fault_ms: 90_000,
            heal_ms_max: 1_800_000,
            jobs_max: 4,
            mutations: Mutations::default(),
            trace: false,
        }
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Faults struck, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Submitted jobs, by outcome (and label).
    pub jobs: BTreeMap<&'static str, u64>,
    pub violations: Vec<Violation>,
    /// The timeline, when [`RunConfig::trace`] is set.
    pub timeline: Vec<String>,
    /// Events the simulator processed.
    pub events: u64,
    /// Virtual time at the end of the run.
    pub end_ms: u64,
}
