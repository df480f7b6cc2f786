//! A small key-value state machine and type config the storage tests share.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::{BasicNode, LogId};
use serde::{Deserialize, Serialize};
use stillpoint_storage::StateMachineData;

openraft::declare_raft_types!(
    /// Test type config with the shapes the store requires.
    pub TestConfig:
        D = KvCommand,
        R = KvResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Sets `key` to `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCommand {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// The value the key had before.
    Previous(Option<String>),
    NoCommand,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    /// How many commands were applied: catches an entry applied twice or skipped.
    pub commands_applied: u64,
}

impl StateMachineData<TestConfig> for Kv {
    fn apply(
        &mut self,
        _log_id: &LogId<u64>,
        _membership: &openraft::Membership<u64, openraft::BasicNode>,
        command: &KvCommand,
    ) -> KvResponse {
        self.commands_applied += 1;
        KvResponse::Previous(self.map.insert(command.key.clone(), command.value.clone()))
    }

    fn response_for_non_command(_log_id: &LogId<u64>) -> KvResponse {
        KvResponse::NoCommand
    }
}

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    openraft::testing::log_id(term, 1, index)
}

pub fn set(term: u64, index: u64, key: &str, value: &str) -> openraft::Entry<TestConfig> {
    openraft::Entry {
        log_id: log_id(term, index),
        payload: openraft::EntryPayload::Normal(KvCommand {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

pub fn blank(term: u64, index: u64) -> openraft::Entry<TestConfig> {
    openraft::testing::blank_ent::<TestConfig>(term, 1, index)
}
