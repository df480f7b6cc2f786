//! The gRPC schema of stillpoint, generated from `proto/*.proto` by tonic-prost-build with a
//! vendored protoc.
//!
//! - [`raft`]: the peer transport between agents (vote, append entries, snapshot chunks). Raft's
//!   own messages travel as openraft's serde encoding inside an envelope that names the cluster
//!   and the target node.
//! - [`cluster`]: the client API every agent serves (identity, membership, status, proposals).
//! - [`array`]: control and data API of a disk array served over the network.
//! - [`host`]: host operations an agent performs on its volumes.
//! - [`job`]: steps of jobs, from the leader's driver to the agent that executes them.
//!
//! Conversions between these wire types and the domain types live next to the domain types'
//! users (`node::wire`), in one module per service, never scattered through handlers.
//!
//! Caveat: messages carry bulk data (snapshot chunks, LD data); servers and clients that move
//! them raise tonic's default 4 MiB message limit to [`MAX_MESSAGE_BYTES`].

/// Largest gRPC message any stillpoint server or client accepts: a snapshot chunk or an LD data
/// block plus its envelope. Larger than openraft's default 3 MiB chunk, well above tonic's 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub mod raft {
    tonic::include_proto!("stillpoint.raft");
}

pub mod cluster {
    tonic::include_proto!("stillpoint.cluster");
}

pub mod array {
    tonic::include_proto!("stillpoint.array");
}

pub mod host {
    tonic::include_proto!("stillpoint.host");
}

pub mod job {
    tonic::include_proto!("stillpoint.job");
}
