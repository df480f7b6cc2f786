//! openraft's own storage test suite, run against a fresh data dir for every case.

mod common;

use common::{Kv, TestConfig};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use stillpoint_storage::{LogStore, StateMachineStore, Store};
use tempfile::TempDir;

struct FreshDataDir;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, StateMachineStore<TestConfig, Kv>, TempDir>
    for FreshDataDir
{
    async fn build(
        &self,
    ) -> Result<
        (
            TempDir,
            LogStore<TestConfig>,
            StateMachineStore<TestConfig, Kv>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let store = Store::open(dir.path()).expect("open a fresh store");
        let log = store.log_store().expect("open the log store");
        let sm = store
            .state_machine_store()
            .expect("open the state machine store");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    if let Err(e) = Suite::test_all(FreshDataDir) {
        panic!("openraft storage suite failed: {e}");
    }
}
