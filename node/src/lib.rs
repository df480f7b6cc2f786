//! The `stillpoint` agent and its command line.
//!
//! An agent is one process per server (business, backup or management). It runs a raft node
//! whose log and state live on sled in the agent's data dir, serves two gRPC services on one
//! port — the peer transport other agents use for Raft ([`peer`]) and the client API operators
//! use ([`cluster_service`]) — and keeps its own entry in the replicated node registry current.
//!
//! ## Modules, one job each
//! - [`config`]: `node.toml`, validated, every error naming file, line and field.
//! - [`agent`]: startup order, self-registration, graceful shutdown.
//! - [`peer`]: openraft's network over gRPC, with a cluster/node envelope check.
//! - [`raft_health`]: a raft core stopped by a fatal error stops the agent; read barrier.
//! - [`cluster_service`]: identity, bootstrap, membership changes, status, proposals, queries.
//! - [`client`]: the client side, following the leader hint so any agent can be named.
//! - [`deadlines`]: how long each request may take on the agent and in the client.
//! - [`volumes`]: the host half (`[host]`), sim volumes backed by array LDs.
//! - [`hba`]: a linux host's LD path, `stillpoint hba serve`: the process, apart from the
//!   agent and outliving it, that presents array LDs as loop devices and serves their I/O.
//! - [`executor`]: the step executor every agent serves (`stillpoint.job.StepExecutor`): runs
//!   the steps of jobs the leader's driver sends (host steps on its own host half, array steps
//!   on the arrays of its `[[arrays]]`), fenced and journaled in the agent's one journal, and
//!   answers probes; [`executor::client`] is the driver's side.
//! - [`site`]: the site file (`site.toml`) into the replicated inventory; `apply`, `inventory show`.
//! - [`driver`]: on the leader only, moves every unfinished job forward: performs what the
//!   coordinator's pure `decide` says (send a step, ask about a step, record an event), applies
//!   each event to its own copy at once and proposes it behind, in order; takes jobs over with
//!   probes after a leader change.
//! - [`demo`]: `stillpoint demo`, a local site of processes (array and agents) running a
//!   backup job through a leader kill; its [`demo::site`] is also the job tests' site. With
//!   `--postgres` ([`demo::postgres`]) the site has linux hosts on array LDs and the backup is
//!   of a live PostgreSQL under pgbench, started and judged from its copy.
//! - [`jobs_cli`]: `backup`, `job list|show|watch|cancel`, `copies list`, over the job views.
//! - [`error`]: the crate's error enum and its one mapping to and from gRPC status.
//! - [`cli`], [`status`], [`output`]: the command line.
//!
//! ## Startup order, and why
//! The listen address is bound before the data dir is opened, so "port in use" touches nothing
//! on disk. The data dir's identity file is then read and checked before sled opens the dir: a
//! missing or empty dir is refused unless the agent was started `--new` (the explicit act that
//! creates a node and draws its incarnation, [`agent::init_data_dir`]), and a dir that belongs
//! to another node or cluster is refused with nothing written. The incarnation travels in the
//! raft membership and in every peer message ([`peer`]), so a node that lost its data cannot
//! vote or be counted under its old id.
//!
//! ## Steps of jobs, fenced (S6)
//! The agent refuses a step whose token is from a term older than its own raft term, older
//! than one it accepted for the same job or the same pair or volume, or fenced by a probe;
//! it records the token durably before acting and the outcome before any reply shows it, so a
//! re-sent token is answered from its journal and never executed twice, and a step cut short by
//! a restart is reported `Interrupted` with what its target looks like now (see [`executor`]).
//! The host half and the executor share one journal handle, opened once at start.
//!
//! ## When raft or its storage fails
//! openraft stops its core on a fatal error (a failed or timed-out write to the data dir, a
//! panic) but leaves the process running. An agent does not linger like that: the moment its
//! core stops on its own it reports no leader, confirms no read, resumes any volume it holds
//! quiesced, stops serving and exits with code 9 ([`error::exit::RAFT_STOPPED`]), the cause on
//! stderr. Restarting it is the supervisor's job (systemd `Restart=on-failure`), once the cause
//! (a full or failing disk) is fixed; the agent comes back from its data dir and catches up.

//! ## Caveats
//! - Transport is plain HTTP/2: mutual TLS and roles (view / backup / restore rights) are not
//!   built yet.
//! - Cluster membership changes go through the leader; the CLI follows the leader hint.
//! - A removed voter stops (exit 10, [`error::exit::REMOVED`]) when a member it asks for a
//!   vote tells it it was removed; a removed learner never asks, so it keeps running (idle,
//!   unregistered) until stopped.
//! - The client API has no caller identity until mutual TLS: `Propose` limits *what* may be
//!   proposed ([`stillpoint_coordinator::Command::proposable_by_clients`]), not who proposes.

pub mod agent;
pub mod cli;
pub mod client;
pub mod cluster_service;
pub mod config;
pub mod deadlines;
pub mod demo;
pub mod driver;
pub mod error;
pub mod executor;
pub mod hba;
pub mod jobs_cli;
pub mod live_array;
pub mod output;
pub mod peer;
pub mod raft_health;
pub mod site;
pub mod site_live;
pub mod status;
pub mod volumes;
pub mod wait;

pub use agent::{RunningAgent, run, start};
pub use client::Client;
pub use config::NodeConfig;
pub use error::NodeError;
