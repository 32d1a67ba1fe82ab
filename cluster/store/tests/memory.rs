//! The object-store contract on the in-memory store.
#![cfg(feature = "test-util")]

use std::sync::Arc;

use dos_store::ObjectStore;
use dos_store::memory::MemoryStore;

async fn setup() -> (Arc<dyn ObjectStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

dos_store::object_store_contract!(setup);
