//! Fuzzes snapshot loading: any file gives a typed error or a body that restores, never a panic, and restoring
//! the same snapshot twice changes nothing (loading is a max-merge). Half the inputs are taken as the whole
//! file (header checks); the other half as a body under a matching header (`format::frame`), so the archive
//! validation and the restore are reached past the checksum.
#![no_main]

use std::sync::Arc;

use bifrost_cluster::UnixMs;
use bifrost_cluster::counter::{CoarseClock, CounterStore, StoreOptions};
use bifrost_cluster::storage::{format, snapshot};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_795_514_400_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        format::frame(rest)
    };
    // What a node does on load: a version-1 file goes through its upgrade first.
    let Ok(file) = format::upgrade(file) else {
        return;
    };
    let Ok(body) = format::decode(&file) else {
        return;
    };
    let store = CounterStore::new(StoreOptions {
        max_keys: 64,
        max_remote_keys: 64,
        replica_id: 1,
        clock: Arc::new(CoarseClock::new(UnixMs::new(NOW))),
        ..StoreOptions::default()
    });
    let _ = snapshot::restore(&store, body);
    let (remote, floors) = (store.remote_snapshot(), store.floor_snapshot());
    let again = snapshot::restore(&store, body);
    assert_eq!(
        again.values, 0,
        "restoring the same snapshot twice raises nothing"
    );
    assert_eq!(
        remote,
        store.remote_snapshot(),
        "restoring twice changes no value"
    );
    assert_eq!(
        floors,
        store.floor_snapshot(),
        "restoring twice changes no floor"
    );
});
