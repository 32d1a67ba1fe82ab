//! Behaviour of `BlockCache` and `StagingArea` on real files in temporary directories.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dos_cache::{BlockBytes, BlockCache, Bytes, CacheConfig, CacheError, ContentKey, StagingArea};
use proptest::prelude::*;

const BLOCK: usize = 64;
/// Size of the header in front of every block file (see the format in `block_file.rs`).
const HEADER: u64 = 68;
/// Disk footprint of one full block.
const FILE: u64 = HEADER + BLOCK as u64;

fn config(dir: &Path) -> CacheConfig {
    CacheConfig {
        block_size: BLOCK,
        memory_bytes: 1 << 20,
        disk_bytes: 1 << 20,
        min_free_disk_bytes: 0,
        ..CacheConfig::new(dir)
    }
}

fn key(n: u8) -> ContentKey {
    let mut key = [0u8; 32];
    key[0] = n.wrapping_mul(37);
    key[31] = n;
    key
}

/// The content of a block: a function of (key, block), as content addressing guarantees.
fn content(key: &ContentKey, block: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| key[0] ^ key[31] ^ (block as u8).wrapping_mul(13) ^ (i as u8))
        .collect()
}

fn put_full(cache: &BlockCache, key: &ContentKey, block: u64) -> Vec<u8> {
    let data = content(key, block, BLOCK);
    cache.put(key, block, &data).unwrap();
    data
}

fn block_path(dir: &Path, key: &ContentKey, block: u64) -> PathBuf {
    let hex = hex::encode(key);
    dir.join("blocks")
        .join(&hex[..2])
        .join(format!("{hex}.{block}"))
}

/// Every file under `dir/blocks`, with its size.
fn block_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("blocks")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((entry.path(), meta.len()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(config(dir.path())).unwrap();
    let key = key(1);
    let size = 2 * BLOCK as u64 + 22;
    let blocks = [
        content(&key, 0, BLOCK),
        content(&key, 1, BLOCK),
        content(&key, 2, 22),
    ];

    assert!(!cache.contains_all(&key, size));
    for (i, data) in blocks.iter().enumerate() {
        cache.put(&key, i as u64, data).unwrap();
    }
    for (i, data) in blocks.iter().enumerate() {
        assert_eq!(cache.get(&key, i as u64).as_deref(), Some(&data[..]));
        assert_eq!(
            fs::metadata(block_path(dir.path(), &key, i as u64))
                .unwrap()
                .len(),
            HEADER + data.len() as u64
        );
    }
    assert_eq!(cache.get(&key, 3), None);
    assert_eq!(cache.get(&self::key(2), 0), None);

    assert!(cache.contains_all(&key, size));
    assert!(!cache.contains_all(&key, 2 * BLOCK as u64 + 1));
    assert!(!cache.contains_all(&key, size + 1));
    assert!(!cache.contains_all(&key, size - 1));
    assert!(cache.contains_all(&self::key(2), 0));
    assert!(!cache.contains_all(&self::key(2), 1));

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 2));
    assert_eq!(stats.memory_bytes, size);
    assert_eq!(stats.memory_blocks, 3);
    assert_eq!(stats.disk_bytes, 3 * HEADER + size);
    assert_eq!(stats.disk_blocks, 3);
    assert_eq!((stats.evictions, stats.corruptions), (0, 0));
}

#[test]
fn rejects_blocks_larger_than_the_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(config(dir.path())).unwrap();
    let err = cache.put(&key(1), 0, &[0; BLOCK + 1]).unwrap_err();
    assert!(matches!(
        err,
        CacheError::BlockTooLarge {
            len: 65,
            block_size: BLOCK
        }
    ));
    assert_eq!(cache.get(&key(1), 0), None);
}

#[test]
fn rejects_a_zero_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let err = BlockCache::open(CacheConfig {
        block_size: 0,
        ..config(dir.path())
    })
    .unwrap_err();
    assert!(matches!(err, CacheError::InvalidConfig(_)));
}

#[test]
fn memory_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 3 * BLOCK as u64,
        disk_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    for block in 0..3 {
        put_full(&cache, &key, block);
    }
    assert!(cache.get(&key, 0).is_some());
    put_full(&cache, &key, 3);

    assert_eq!(cache.get(&key, 1), None);
    for block in [0, 2, 3] {
        assert_eq!(
            cache.get(&key, block).as_deref(),
            Some(&content(&key, block, BLOCK)[..])
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.memory_bytes, 3 * BLOCK as u64);
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.disk_bytes, 0);
    assert!(block_files(dir.path()).is_empty());
}

/// Blocks not used for a while leave the memory tier (the disk keeps them); a block used
/// since stays.
#[test]
fn idle_blocks_give_their_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(config(dir.path())).unwrap();
    let key = key(9);
    for block in 0..4 {
        put_full(&cache, &key, block);
    }
    assert_eq!(cache.stats().memory_bytes, 4 * BLOCK as u64);
    assert_eq!(
        cache.trim_memory(Duration::from_secs(60)),
        0,
        "nothing is idle yet"
    );
    std::thread::sleep(Duration::from_millis(120));
    assert!(cache.get(&key, 2).is_some(), "block 2 used again");
    assert_eq!(
        cache.trim_memory(Duration::from_millis(100)),
        3 * BLOCK as u64
    );
    assert_eq!(cache.stats().memory_bytes, BLOCK as u64, "block 2 stays");
    // The others are read from disk again.
    for block in 0..4 {
        assert_eq!(
            cache.get(&key, block).as_deref(),
            Some(&content(&key, block, BLOCK)[..])
        );
    }
}

#[test]
fn disk_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        disk_bytes: 3 * FILE,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    for block in 0..3 {
        put_full(&cache, &key, block);
    }
    assert!(cache.get(&key, 0).is_some());
    put_full(&cache, &key, 3);

    assert_eq!(cache.get(&key, 1), None);
    assert!(!block_path(dir.path(), &key, 1).exists());
    for block in [0, 2, 3] {
        assert_eq!(
            cache.get(&key, block).as_deref(),
            Some(&content(&key, block, BLOCK)[..])
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.disk_bytes, 3 * FILE);
    assert_eq!(stats.memory_bytes, 0);
    assert_eq!(stats.evictions, 1);
}

#[test]
fn memory_hits_keep_a_block_recent_on_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 3 * BLOCK as u64,
        disk_bytes: 3 * FILE,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    for block in 0..3 {
        put_full(&cache, &key, block);
    }
    assert!(cache.get(&key, 0).is_some()); // served from memory
    put_full(&cache, &key, 3);
    assert!(block_path(dir.path(), &key, 0).exists());
    assert!(!block_path(dir.path(), &key, 1).exists());
}

#[test]
fn corrupt_block_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    put_full(&cache, &key, 0);
    put_full(&cache, &key, 1);
    let path = block_path(dir.path(), &key, 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER as usize + 10] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    assert_eq!(cache.get(&key, 0), None);
    assert!(!path.exists());
    assert_eq!(cache.get(&key, 0), None);
    assert!(cache.get(&key, 1).is_some());
    let stats = cache.stats();
    assert_eq!(stats.corruptions, 1);
    assert_eq!((stats.hits, stats.misses), (1, 2));
    assert_eq!(stats.disk_blocks, 1);
    assert_eq!(stats.disk_bytes, FILE);
    assert!(!cache.contains_all(&key, 2 * BLOCK as u64));

    // The block can be cached again.
    put_full(&cache, &key, 0);
    assert!(cache.contains_all(&key, 2 * BLOCK as u64));
}

#[test]
fn block_file_under_another_name_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    put_full(&cache, &key, 0);
    put_full(&cache, &key, 1);
    // Block 1's file now holds block 0's (valid, checksummed) bytes.
    fs::copy(
        block_path(dir.path(), &key, 0),
        block_path(dir.path(), &key, 1),
    )
    .unwrap();
    assert_eq!(cache.get(&key, 1), None);
    assert_eq!(cache.stats().corruptions, 1);
    assert!(!block_path(dir.path(), &key, 1).exists());
}

#[test]
fn deleted_block_file_is_a_miss_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    let key = key(1);
    put_full(&cache, &key, 0);
    fs::remove_file(block_path(dir.path(), &key, 0)).unwrap();
    assert_eq!(cache.get(&key, 0), None);
    let stats = cache.stats();
    assert_eq!((stats.disk_blocks, stats.disk_bytes), (0, 0));
    assert_eq!(stats.corruptions, 0);
}

#[test]
fn restart_keeps_disk_blocks_and_cleans_up_debris() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(1);
    {
        let cache = BlockCache::open(config(dir.path())).unwrap();
        for block in 0..4 {
            put_full(&cache, &key, block);
        }
    }
    let shard = block_path(dir.path(), &key, 0)
        .parent()
        .unwrap()
        .to_path_buf();
    let debris = [
        shard.join(".tmp-interrupted"),
        dir.path().join("blocks/stray"),
        shard.join("not-a-block"),
        block_path(dir.path(), &key, 7), // garbage under a valid name
        block_path(dir.path(), &key, 8), // another block's valid file
        block_path(dir.path(), &self::key(2), 0), // right name, wrong shard
    ];
    fs::write(&debris[0], b"half a block").unwrap();
    fs::write(&debris[1], b"?").unwrap();
    fs::write(&debris[2], b"?").unwrap();
    fs::write(&debris[3], vec![0u8; 200]).unwrap();
    fs::copy(block_path(dir.path(), &key, 0), &debris[4]).unwrap();
    fs::create_dir_all(debris[5].parent().unwrap()).unwrap();
    let wrong_shard = shard.join(debris[5].file_name().unwrap());
    fs::write(&wrong_shard, b"?").unwrap();
    let foreign_dir = dir.path().join("blocks/not-a-shard");
    fs::create_dir(&foreign_dir).unwrap();

    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    for block in 0..4 {
        assert_eq!(
            cache.get(&key, block).as_deref(),
            Some(&content(&key, block, BLOCK)[..])
        );
    }
    for path in debris.iter().chain([&wrong_shard]) {
        assert!(!path.exists(), "{} survived", path.display());
    }
    assert!(foreign_dir.exists(), "unknown directories are left alone");
    let stats = cache.stats();
    assert_eq!((stats.disk_blocks, stats.disk_bytes), (4, 4 * FILE));
    assert_eq!(stats.hits, 4);
    assert!(cache.contains_all(&key, 4 * BLOCK as u64));
}

#[test]
fn restart_discards_blocks_of_another_block_size() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = BlockCache::open(config(dir.path())).unwrap();
        put_full(&cache, &key(1), 0);
    }
    let cache = BlockCache::open(CacheConfig {
        block_size: 2 * BLOCK,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(cache.get(&key(1), 0), None);
    assert!(block_files(dir.path()).is_empty());
}

#[test]
fn restart_orders_by_mtime_and_enforces_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(1);
    let past = SystemTime::now() - Duration::from_secs(3600);
    {
        let cache = BlockCache::open(CacheConfig {
            memory_bytes: 0,
            ..config(dir.path())
        })
        .unwrap();
        for block in 0..4 {
            put_full(&cache, &key, block);
            let file = fs::File::options()
                .write(true)
                .open(block_path(dir.path(), &key, block))
                .unwrap();
            file.set_modified(past + Duration::from_secs(block))
                .unwrap();
        }
        // Reading block 0 from disk makes it the most recently used, across restarts too.
        assert!(cache.get(&key, 0).is_some());
    }
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        disk_bytes: 2 * FILE,
        ..config(dir.path())
    })
    .unwrap();
    let stats = cache.stats();
    assert_eq!((stats.disk_blocks, stats.disk_bytes), (2, 2 * FILE));
    assert_eq!(stats.evictions, 2);
    assert!(cache.get(&key, 0).is_some());
    assert!(cache.get(&key, 3).is_some());
    assert_eq!(cache.get(&key, 1), None);
    assert_eq!(cache.get(&key, 2), None);
    assert_eq!(block_files(dir.path()).len(), 2);
}

#[test]
fn staging_files_are_never_counted_or_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let staging = StagingArea::new(dir.path()).unwrap();
    assert_eq!(staging.dir(), dir.path().join("staging"));
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: BLOCK as u64,
        disk_bytes: 2 * FILE,
        ..config(dir.path())
    })
    .unwrap();

    let mut dropped = staging.create().unwrap();
    let mut kept = staging.create().unwrap();
    let persisted = staging.create().unwrap();
    let written = vec![42u8; 10 * FILE as usize];
    kept.write_all(&written).unwrap();
    dropped.write_all(b"scratch").unwrap();
    assert!(kept.path().starts_with(dir.path().join("staging")));

    for block in 0..20 {
        put_full(&cache, &key(1), block);
    }
    let stats = cache.stats();
    assert_eq!(stats.disk_bytes, 2 * FILE);
    assert!(stats.evictions > 0);
    // Reopening (which scans and cleans the block directory) leaves staging alone too.
    drop(cache);
    let cache = BlockCache::open(CacheConfig {
        disk_bytes: 0,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(cache.stats().disk_bytes, 0);

    let mut read_back = Vec::new();
    kept.seek(SeekFrom::Start(0)).unwrap();
    kept.read_to_end(&mut read_back).unwrap();
    assert_eq!(read_back, written);

    let dropped_path = dropped.path().to_path_buf();
    drop(dropped);
    assert!(!dropped_path.exists());

    let (_file, kept_path) = kept.keep().unwrap();
    assert_eq!(fs::read(&kept_path).unwrap(), written);

    let target = dir.path().join("uploaded");
    persisted.persist(&target).unwrap();
    assert!(target.exists());
}

#[test]
fn below_the_free_space_floor_blocks_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(1);
    {
        let cache = BlockCache::open(config(dir.path())).unwrap();
        put_full(&cache, &key, 0);
        assert_eq!(block_files(dir.path()).len(), 1);
    }
    let cache = BlockCache::open(CacheConfig {
        min_free_disk_bytes: u64::MAX,
        ..config(dir.path())
    })
    .unwrap();
    // Opening below the floor gives the space of existing blocks back.
    assert!(block_files(dir.path()).is_empty());
    let data = put_full(&cache, &key, 1);
    assert!(block_files(dir.path()).is_empty());
    assert_eq!(cache.get(&key, 1).as_deref(), Some(&data[..]));
    let stats = cache.stats();
    assert_eq!((stats.disk_bytes, stats.disk_blocks), (0, 0));
    assert_eq!(stats.memory_bytes, BLOCK as u64);
    assert_eq!(stats.hits, 1);
}

#[test]
fn concurrent_use_returns_only_what_was_put() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 8 * BLOCK as u64,
        disk_bytes: 16 * FILE,
        ..config(dir.path())
    })
    .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let cache = cache.clone();
            scope.spawn(move || {
                for i in 0..300u64 {
                    let key = key((i % 5) as u8);
                    let block = (i * 7 + thread) % 8;
                    if i % 3 == 0 {
                        put_full(&cache, &key, block);
                    } else if let Some(data) = cache.get(&key, block) {
                        assert_eq!(data, content(&key, block, BLOCK));
                    }
                }
            });
        }
    });
    let stats = cache.stats();
    assert!(stats.memory_bytes <= 8 * BLOCK as u64);
    assert!(stats.disk_bytes <= 16 * FILE);
    assert_eq!(stats.corruptions, 0);
    let on_disk: u64 = block_files(dir.path()).iter().map(|(_, len)| len).sum();
    assert_eq!(on_disk, stats.disk_bytes);
}

#[test]
fn block_cache_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<BlockCache>();
    assert_traits::<StagingArea>();
}

#[derive(Debug, Clone)]
enum Op {
    Put { object: u8, block: u64 },
    Get { object: u8, block: u64 },
    Reopen,
}

/// Objects of 4 blocks, the last one shorter and of a per-object length.
const BLOCKS_PER_OBJECT: u64 = 4;
const SMALL: usize = 32;

fn block_len(object: u8, block: u64) -> usize {
    if block == BLOCKS_PER_OBJECT - 1 {
        1 + usize::from(object) * 5 % SMALL
    } else {
        SMALL
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Objects 0..6 are put; gets also ask for object 6 and block 4, which never are.
        6 => (0u8..6, 0..BLOCKS_PER_OBJECT)
            .prop_map(|(object, block)| Op::Put { object, block }),
        6 => (0u8..7, 0..=BLOCKS_PER_OBJECT)
            .prop_map(|(object, block)| Op::Get { object, block }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The working set (6 objects of 4 blocks) is well over twice either budget. After any
    /// sequence of operations both budgets hold, a `get` that hits returns exactly what was
    /// put, the block just put is always there, and the disk accounting matches the files.
    #[test]
    fn budgets_hold_and_hits_are_exact(ops in prop::collection::vec(op(), 1..48)) {
        let dir = tempfile::tempdir().unwrap();
        let memory_budget = 4 * SMALL as u64;
        let disk_budget = 5 * (HEADER + SMALL as u64);
        let config = CacheConfig {
            block_size: SMALL,
            memory_bytes: memory_budget,
            disk_bytes: disk_budget,
            ..config(dir.path())
        };
        let mut cache = BlockCache::open(config.clone()).unwrap();
        for op in ops {
            match op {
                Op::Put { object, block } => {
                    let key = key(object);
                    let data = content(&key, block, block_len(object, block));
                    cache.put(&key, block, &data).unwrap();
                    prop_assert_eq!(cache.get(&key, block), Some(data.into()));
                }
                Op::Get { object, block } => {
                    let key = key(object);
                    if let Some(data) = cache.get(&key, block) {
                        let was_put = object < 6 && block < BLOCKS_PER_OBJECT;
                        prop_assert!(was_put, "hit on a block never put");
                        prop_assert_eq!(data, content(&key, block, block_len(object, block)));
                    }
                }
                Op::Reopen => {
                    drop(cache);
                    cache = BlockCache::open(config.clone()).unwrap();
                }
            }
            let stats = cache.stats();
            prop_assert!(stats.memory_bytes <= memory_budget, "{stats:?}");
            prop_assert!(stats.disk_bytes <= disk_budget, "{stats:?}");
            prop_assert_eq!(stats.corruptions, 0);
        }
        let on_disk: u64 = block_files(dir.path()).iter().map(|(_, len)| len).sum();
        prop_assert_eq!(on_disk, cache.stats().disk_bytes);
    }
}

/// Blocks put with the object's size go into one content file, which can be handed out whole
/// once complete, survives a restart, and is checked before it is handed out.
#[test]
fn whole_objects_are_one_checked_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    };
    let cache = BlockCache::open(config.clone()).unwrap();
    let key = key(9);
    let size = 3 * BLOCK as u64 + 5;
    let mut whole = Vec::new();
    // Out of order, as concurrent windows may deliver them.
    for block in [2u64, 0, 3, 1] {
        let len = if block == 3 { 5 } else { BLOCK };
        let data = content(&key, block, len);
        assert!(cache.object_file(&key, size).is_none());
        cache
            .put_shared(&key, block, data.into(), Some(size))
            .unwrap();
    }
    for block in 0..4 {
        let len = if block == 3 { 5 } else { BLOCK };
        whole.extend(content(&key, block, len));
        assert_eq!(
            cache.get(&key, block).as_deref(),
            Some(&content(&key, block, len)[..])
        );
    }
    assert!(cache.contains_all(&key, size));
    assert!(cache.object_file(&key, size + 1).is_none());
    let read_whole = |cache: &BlockCache| {
        let mut got = Vec::new();
        let mut file = cache.object_file(&key, size)?;
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut got).unwrap();
        Some(got)
    };
    assert_eq!(read_whole(&cache).as_deref(), Some(&whole[..]));
    // Content plus a checksum file (56-byte header, 4 bytes per block); no block files.
    let stats = cache.stats();
    assert_eq!(stats.disk_bytes, size + 56 + 4 * 4);
    assert_eq!(block_files(dir.path()), vec![]);
    drop(cache);

    let cache = BlockCache::open(config.clone()).unwrap();
    assert_eq!(read_whole(&cache).as_deref(), Some(&whole[..]));
    assert_eq!(
        cache.get(&key, 1).as_deref(),
        Some(&content(&key, 1, BLOCK)[..])
    );

    // A flipped bit: the whole file is refused and removed.
    let path = dir
        .path()
        .join("objects")
        .join(format!("{}.obj", hex::encode(key)));
    let mut bytes = fs::read(&path).unwrap();
    bytes[BLOCK + 3] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(cache.object_file(&key, size).is_none());
    assert!(!path.exists());
    assert_eq!(cache.stats().corruptions, 1);
    assert_eq!(cache.stats().disk_bytes, 0);
    assert!(!cache.contains_all(&key, size));

    // An incomplete object does not survive a restart.
    cache
        .put_shared(&key, 0, content(&key, 0, BLOCK).into(), Some(size))
        .unwrap();
    drop(cache);
    let cache = BlockCache::open(config).unwrap();
    assert_eq!(cache.get(&key, 0), None);
    assert_eq!(cache.stats().disk_bytes, 0);
    assert_eq!(fs::read_dir(dir.path().join("objects")).unwrap().count(), 0);
}

/// `data` as the uneven pieces a network stream delivers.
fn in_pieces(data: &[u8]) -> BlockBytes {
    let mut block = BlockBytes::new();
    let mut at = 0;
    for cut in [1, data.len() / 3, data.len() / 3 + 7, data.len()] {
        let cut = cut.clamp(at, data.len());
        block.push(Bytes::copy_from_slice(&data[at..cut]));
        at = cut;
    }
    block
}

/// Blocks handed over in pieces are stored and checked as one block, in an object's content
/// file and as block files alike.
#[test]
fn blocks_in_pieces_are_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        memory_bytes: 0,
        ..config(dir.path())
    };
    let cache = BlockCache::open(config.clone()).unwrap();
    let (object, single) = (key(11), key(12));
    let size = 2 * BLOCK as u64 + 9;
    let lens = [BLOCK, BLOCK, 9];
    for (block, len) in lens.iter().enumerate() {
        let data = in_pieces(&content(&object, block as u64, *len));
        assert!(data.parts().len() > 1);
        cache
            .put_shared(&object, block as u64, data, Some(size))
            .unwrap();
    }
    cache
        .put_shared(&single, 0, in_pieces(&content(&single, 0, 40)), None)
        .unwrap();
    drop(cache);

    // After a restart everything comes from disk, every checksum checked.
    let cache = BlockCache::open(config).unwrap();
    let mut whole = Vec::new();
    for (block, len) in lens.iter().enumerate() {
        let expected = content(&object, block as u64, *len);
        assert_eq!(
            cache.get(&object, block as u64).as_deref(),
            Some(&expected[..])
        );
        whole.extend(expected);
    }
    let mut got = Vec::new();
    let mut file = cache
        .object_file(&object, size)
        .expect("complete object file");
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut got).unwrap();
    assert_eq!(got, whole);
    assert_eq!(
        cache.get(&single, 0).as_deref(),
        Some(&content(&single, 0, 40)[..])
    );
    assert_eq!(cache.stats().corruptions, 0);
}

/// Objects count against the disk budget like blocks, and too large ones stay blocks.
#[test]
fn whole_objects_respect_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 40 * BLOCK as u64;
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 0,
        disk_bytes: budget,
        ..config(dir.path())
    })
    .unwrap();
    // 8 blocks: a fifth of the budget, kept as one file; five of them do not fit.
    let size = 8 * BLOCK as u64;
    for n in 0..6u8 {
        let key = key(n);
        for block in 0..8 {
            cache
                .put_shared(&key, block, content(&key, block, BLOCK).into(), Some(size))
                .unwrap();
        }
        assert!(cache.object_file(&key, size).is_some());
        assert!(cache.stats().disk_bytes <= budget);
    }
    assert!(cache.object_file(&key(0), size).is_none());
    assert!(cache.stats().evictions >= 1);
    // 16 blocks: over a quarter of the budget, kept as block files.
    let big = key(7);
    for block in 0..16 {
        cache
            .put_shared(
                &big,
                block,
                content(&big, block, BLOCK).into(),
                Some(16 * BLOCK as u64),
            )
            .unwrap();
    }
    assert!(cache.object_file(&big, 16 * BLOCK as u64).is_none());
    assert!(cache.contains_all(&big, 16 * BLOCK as u64));
    assert!(cache.stats().disk_bytes <= budget);
}

/// A block that lands in an object file is not kept in memory as well (the OS page cache has
/// it); a block kept as a block file is. `contains` sees both without counting a use.
#[test]
fn object_file_blocks_skip_the_memory_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(config(dir.path())).unwrap();
    let (big, small) = (key(21), key(22));
    let size = 2 * BLOCK as u64;
    cache
        .put_shared(&big, 0, content(&big, 0, BLOCK).into(), Some(size))
        .unwrap();
    cache
        .put_shared(&small, 0, content(&small, 0, 10).into(), Some(10))
        .unwrap();
    let stats = cache.stats();
    assert_eq!((stats.memory_blocks, stats.memory_bytes), (1, 10));
    assert!(cache.contains(&big, 0));
    assert!(cache.contains(&small, 0));
    assert!(!cache.contains(&big, 1));
    assert!(!cache.contains(&key(23), 0));
    assert_eq!((cache.stats().hits, cache.stats().misses), (0, 0));
    // Still readable, from the object file.
    assert_eq!(
        cache.get(&big, 0).as_deref(),
        Some(&content(&big, 0, BLOCK)[..])
    );
}
