use super::*;
use std::fs::OpenOptions;
use std::io::Write;

fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn upload(store: &ShardStore, hash: &ContentHash, shard: u8, bytes: &[u8]) {
    let id = store
        .create_temp(hash, shard, Some(bytes.len() as u64))
        .unwrap();
    for (k, piece) in bytes.chunks(PIECE_SIZE).enumerate() {
        store
            .write_piece(&id, (k * PIECE_SIZE) as u64, piece)
            .unwrap();
    }
    store.commit(&id, bytes.len() as u64, None).unwrap();
}

fn read_all(store: &ShardStore, hash: &ContentHash, shard: u8) -> Result<Vec<u8>, ShardStoreError> {
    let mut r = store.open_shard(hash, shard)?;
    let mut out = Vec::new();
    for k in 0..(r.len() as usize).div_ceil(PIECE_SIZE) {
        out.extend(r.piece(k)?);
    }
    Ok(out)
}

#[test]
fn round_trip_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"x");
    let bytes = data(PIECE_SIZE * 2 + 17, 1);
    upload(&store, &hash, 3, &bytes);
    assert_eq!(store.shards_of(&hash), vec![3]);
    assert_eq!(read_all(&store, &hash, 3).unwrap(), bytes);
    let zeros = vec![0u8; PIECE_SIZE * 3];
    let zhash = ContentHash::of(b"zeros");
    upload(&store, &zhash, 0, &zeros);
    let on_disk = fs::metadata(store.shard_path(&zhash, 0)).unwrap().len();
    assert!(
        on_disk < 100_000,
        "zeros are compressed at rest ({on_disk})"
    );
    drop(store);
    fs::write(dir.path().join("objects/stray"), b"?").unwrap();
    fs::create_dir_all(dir.path().join("objects/zz")).unwrap();
    fs::write(dir.path().join("objects/zz/not-a-shard.7"), b"?").unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    assert_eq!(store.shards_of(&hash), vec![3]);
    assert_eq!(read_all(&store, &hash, 3).unwrap(), bytes);
    assert_eq!(read_all(&store, &zhash, 0).unwrap(), zeros);
}

#[test]
fn empty_shard() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"");
    let id = store.create_temp(&hash, 0, Some(0)).unwrap();
    store.commit(&id, 0, None).unwrap();
    assert_eq!(read_all(&store, &hash, 0).unwrap(), Vec::<u8>::new());
}

#[test]
fn corruption_is_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"y");
    let bytes = data(PIECE_SIZE + 5, 2);
    upload(&store, &hash, 1, &bytes);
    let path = store.shard_path(&hash, 1);
    let mut raw = fs::read(&path).unwrap();
    raw[format::HEADER_LEN as usize + 100] ^= 0xff;
    fs::write(&path, raw).unwrap();
    let mut r = store.open_shard(&hash, 1).unwrap();
    assert!(matches!(r.piece(0), Err(FormatError::Corrupt(_))));
    // The second piece is still fine: partial reads are verified piece by piece.
    assert_eq!(r.piece(1).unwrap(), bytes[PIECE_SIZE..]);
    store.quarantine(&hash, 1, "test");
    assert!(store.shards_of(&hash).is_empty());
    assert!(!path.exists());
    assert_eq!(
        fs::read_dir(dir.path().join("quarantine")).unwrap().count(),
        1
    );
    assert!(matches!(
        store.open_shard(&hash, 1),
        Err(ShardStoreError::NotFound(_))
    ));
}

#[test]
fn truncated_file_is_detected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"z");
    upload(&store, &hash, 2, &data(1000, 3));
    let path = store.shard_path(&hash, 2);
    let raw = fs::read(&path).unwrap();
    fs::write(&path, &raw[..raw.len() - 3]).unwrap();
    assert!(matches!(
        store.open_shard(&hash, 2),
        Err(ShardStoreError::Corrupt(_))
    ));
    assert!(store.shards_of(&hash).is_empty());
}

#[test]
fn temp_offsets_resume_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"t");
    let bytes = data(PIECE_SIZE * 3, 4);
    let id = store
        .create_temp(&hash, 0, Some(bytes.len() as u64))
        .unwrap();
    store.write_piece(&id, 0, &bytes[..PIECE_SIZE]).unwrap();
    assert!(matches!(
        store.write_piece(&id, 2 * PIECE_SIZE as u64, &bytes[..PIECE_SIZE]),
        Err(ShardStoreError::OffsetMismatch { .. })
    ));
    assert!(matches!(
        store.write_piece(&id, PIECE_SIZE as u64, &bytes[..10]),
        Err(ShardStoreError::BadRequest(_))
    ));
    store
        .write_piece(&id, PIECE_SIZE as u64, &data(PIECE_SIZE, 99))
        .unwrap();
    // A retry from an earlier boundary replaces what followed.
    store
        .write_piece(&id, PIECE_SIZE as u64, &bytes[PIECE_SIZE..2 * PIECE_SIZE])
        .unwrap();
    assert!(
        store.commit(&id, bytes.len() as u64, None).is_err(),
        "incomplete upload cannot commit"
    );
    assert_eq!(store.read_temp_piece(&id, 0).unwrap(), bytes[..PIECE_SIZE]);
    // Survives a restart of the data server.
    drop(store);
    let store = ShardStore::open(dir.path()).unwrap();
    assert_eq!(
        store.temp_status(&id).unwrap(),
        TempStatus {
            received: 2 * PIECE_SIZE as u64,
            length: Some(bytes.len() as u64)
        }
    );
    assert_eq!(
        store.read_temp_piece(&id, 1).unwrap(),
        bytes[PIECE_SIZE..2 * PIECE_SIZE]
    );
    store
        .write_piece(&id, 2 * PIECE_SIZE as u64, &bytes[2 * PIECE_SIZE..])
        .unwrap();
    assert!(matches!(
        store.write_piece(&id, 3 * PIECE_SIZE as u64, b"x"),
        Err(ShardStoreError::BadRequest(_))
    ));
    store.commit(&id, bytes.len() as u64, None).unwrap();
    assert_eq!(read_all(&store, &hash, 0).unwrap(), bytes);
    assert!(matches!(
        store.temp_status(&id),
        Err(ShardStoreError::NotFound(_))
    ));
    assert_eq!(fs::read_dir(dir.path().join("temp")).unwrap().count(), 0);
}

#[test]
fn bad_ids_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.temp_status("../../etc/passwd"),
        Err(ShardStoreError::NotFound(_))
    ));
    let id = store
        .create_temp(&ContentHash::of(b"e"), 0, Some(10))
        .unwrap();
    assert_eq!(store.expire_temps(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(store.expire_temps(Duration::ZERO).unwrap(), 2);
    assert!(store.temp_status(&id).is_err());
}

#[test]
fn unknown_length_upload() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"u");
    let bytes = data(PIECE_SIZE + 9, 5);
    let id = store.create_temp(&hash, 4, None).unwrap();
    store.write_piece(&id, 0, &bytes[..PIECE_SIZE]).unwrap();
    store
        .write_piece(&id, PIECE_SIZE as u64, &bytes[PIECE_SIZE..])
        .unwrap();
    assert!(store.write_piece(&id, bytes.len() as u64, b"more").is_err());
    assert!(store.commit(&id, 5, None).is_err());
    store.commit(&id, bytes.len() as u64, None).unwrap();
    assert_eq!(read_all(&store, &hash, 4).unwrap(), bytes);
}

fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

#[test]
fn packed_shards_round_trip_restart_and_take_little_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let mut written = Vec::new();
    for i in 0..500u32 {
        let hash = ContentHash::of(&i.to_le_bytes());
        let bytes = data(1024 + i as usize, i);
        store.put_whole(&hash, (i % 6) as u8, &bytes).unwrap();
        written.push((hash, (i % 6) as u8, bytes));
    }
    let empty = ContentHash::of(b"empty");
    store.put_whole(&empty, 0, &[]).unwrap();
    for (h, s, b) in &written {
        assert_eq!(store.shards_of(h), vec![*s]);
        assert_eq!(&read_all(&store, h, *s).unwrap(), b);
    }
    assert!(read_all(&store, &empty, 0).unwrap().is_empty());
    // No shard file, and about the bytes' own size on disk.
    assert_eq!(fs::read_dir(dir.path().join("objects")).unwrap().count(), 0);
    let raw: usize = written.iter().map(|(_, _, b)| b.len()).sum();
    let (packed, dead) = store.pack_usage();
    assert_eq!(dead, 0);
    assert!(
        packed < (raw as u64) * 11 / 10 + 500 * 80,
        "{packed} bytes on disk for {raw}"
    );
    // Too big for one request: refused, nothing stored.
    let big = ContentHash::of(b"big");
    assert!(matches!(
        store.put_whole(&big, 0, &data(PIECE_SIZE + 1, 0)),
        Err(ShardStoreError::BadRequest(_))
    ));
    assert!(store.shards_of(&big).is_empty());
    drop(store);
    let store = ShardStore::open(dir.path()).unwrap();
    for (h, s, b) in &written {
        assert_eq!(store.shards_of(h), vec![*s]);
        assert_eq!(&read_all(&store, h, *s).unwrap(), b);
    }
    let listed = store.list_shards(None, 10_000).unwrap();
    assert_eq!(listed.len(), 501);
    assert!(listed.iter().all(|e| e.age_secs < 60));
}

#[test]
fn a_torn_pack_tail_is_cut_and_acknowledged_shards_survive() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let keep: Vec<_> = (0..20u32)
        .map(|i| (ContentHash::of(&i.to_le_bytes()), data(3000, i)))
        .collect();
    for (h, b) in &keep {
        store.put_whole(h, 1, b).unwrap();
    }
    drop(store);
    // A crash mid-append: half an entry at the end of the last pack.
    let last = pack_files(dir.path()).pop().unwrap();
    let whole = fs::metadata(&last).unwrap().len();
    let entry = pack::encode_entry(&ContentHash::of(b"torn"), 2, &data(5000, 9), 1);
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&entry[..entry.len() / 2]).unwrap();
    drop(f);
    let store = ShardStore::open(dir.path()).unwrap();
    assert_eq!(fs::metadata(&last).unwrap().len(), whole, "torn tail cut");
    for (h, b) in &keep {
        assert_eq!(&read_all(&store, h, 1).unwrap(), b);
    }
    assert!(store.shards_of(&ContentHash::of(b"torn")).is_empty());
}

#[test]
fn corruption_inside_a_pack_is_quarantined_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let shards: Vec<_> = (0..10u32)
        .map(|i| (ContentHash::of(&i.to_le_bytes()), data(2000, i)))
        .collect();
    for (h, b) in &shards {
        store.put_whole(h, 4, b).unwrap();
    }
    let victim = store.packs.loc(&shards[3].0, 4).unwrap();
    drop(store);
    // Flip a payload byte of the fourth shard.
    let path = pack_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let at = (victim.offset + victim.len - 10) as usize;
    bytes[at] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.verify_shard(&shards[3].0, 4),
        Err(ShardStoreError::Corrupt(_))
    ));
    assert!(
        store.shards_of(&shards[3].0).is_empty(),
        "no longer claimed"
    );
    let quarantined: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].ends_with(".packed"));
    for (i, (h, b)) in shards.iter().enumerate() {
        if i != 3 {
            assert_eq!(&read_all(&store, h, 4).unwrap(), b);
        }
    }
    // A damaged entry header in the middle: the entries after it are still found.
    drop(store);
    let mut bytes = fs::read(&path).unwrap();
    bytes[victim.offset as usize + 20] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    for (i, (h, b)) in shards.iter().enumerate() {
        if i != 3 {
            assert_eq!(&read_all(&store, h, 4).unwrap(), b, "shard {i}");
        }
    }
}

#[test]
fn removed_packed_shards_go_to_garbage_and_compaction_reclaims_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let shards: Vec<_> = (0..100u32)
        .map(|i| (ContentHash::of(&i.to_le_bytes()), data(4000, i)))
        .collect();
    for (h, b) in &shards {
        store.put_whole(h, 0, b).unwrap();
    }
    // Too new for a conditional removal.
    assert!(matches!(
        store.remove_shard(&shards[0].0, 0, Some(Duration::from_secs(3600))),
        Err(ShardStoreError::TooNew(_))
    ));
    for (h, _) in shards.iter().take(70) {
        store.remove_shard(h, 0, None).unwrap();
    }
    assert!(matches!(
        store.remove_shard(&shards[0].0, 0, None),
        Err(ShardStoreError::NotFound(_))
    ));
    assert_eq!(
        fs::read_dir(dir.path().join("garbage")).unwrap().count(),
        70
    );
    let (before, dead) = store.pack_usage();
    assert!(dead > before / 2);
    // Removals survive a restart (the dead list).
    drop(store);
    let store = ShardStore::open(dir.path()).unwrap();
    assert!(store.shards_of(&shards[5].0).is_empty());
    store.roll_pack().unwrap();
    let done = store.compact_packs().unwrap();
    assert!(done.packs >= 1 && done.moved == 30, "{done:?}");
    assert!(done.corrupt.is_empty());
    let (after, dead) = store.pack_usage();
    assert!(after < before / 2, "{after} of {before}");
    assert_eq!(dead, 0);
    for (i, (h, b)) in shards.iter().enumerate() {
        if i < 70 {
            assert!(store.shards_of(h).is_empty());
        } else {
            assert_eq!(&read_all(&store, h, 0).unwrap(), b);
        }
    }
    drop(store);
    let store = ShardStore::open(dir.path()).unwrap();
    for (h, b) in shards.iter().skip(70) {
        assert_eq!(&read_all(&store, h, 0).unwrap(), b);
    }
    assert_eq!(store.list_shards(None, 1000).unwrap().len(), 30);
}

#[test]
fn compaction_under_concurrent_reads_and_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(ShardStore::open(dir.path()).unwrap());
    let first: Vec<_> = (0..300u32)
        .map(|i| (ContentHash::of(&i.to_le_bytes()), data(1500, i)))
        .collect();
    for (h, b) in &first {
        store.put_whole(h, 2, b).unwrap();
    }
    for (h, _) in first.iter().step_by(2) {
        store.remove_shard(h, 2, None).unwrap();
    }
    store.roll_pack().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (store, stop, first) = (store.clone(), stop.clone(), first.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // The live (odd) ones, the two readers in opposite orders.
                    let live: Vec<_> = first.iter().skip(1).step_by(2).collect();
                    let order: Vec<_> = if t == 0 {
                        live
                    } else {
                        live.into_iter().rev().collect()
                    };
                    for (h, b) in order {
                        assert_eq!(&read_all(&store, h, 2).unwrap(), b);
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut new = Vec::new();
            for i in 1000..1300u32 {
                let (h, b) = (ContentHash::of(&i.to_le_bytes()), data(1500, i));
                store.put_whole(&h, 2, &b).unwrap();
                new.push((h, b));
            }
            new
        })
    };
    let done = store.compact_packs().unwrap();
    let new = writer.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(done.packs >= 1, "{done:?}");
    drop(store);
    let store = ShardStore::open(dir.path()).unwrap();
    for (h, b) in first.iter().skip(1).step_by(2).chain(new.iter()) {
        assert_eq!(&read_all(&store, h, 2).unwrap(), b);
    }
    for (h, _) in first.iter().step_by(2) {
        assert!(store.shards_of(h).is_empty());
    }
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn uploads_in_progress_hold_no_descriptor_and_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(dir.path()).unwrap();
    let hash = ContentHash::of(b"many uploads");
    let before = open_fds();
    let mut ids = Vec::new();
    for i in 0..200u32 {
        let id = store.create_temp(&hash, (i % 6) as u8, None).unwrap();
        store.write_piece(&id, 0, &data(PIECE_SIZE, i)).unwrap();
        ids.push(id);
    }
    // Other tests of this binary run at once and open files too: allow a little.
    assert!(
        open_fds() < before + 20,
        "{} descriptors for 200 uploads",
        open_fds() - before
    );
    // They still work: one goes on and commits, one is read back.
    store
        .write_piece(&ids[0], PIECE_SIZE as u64, &data(10, 0))
        .unwrap();
    store.commit(&ids[0], PIECE_SIZE as u64 + 10, None).unwrap();
    assert_eq!(
        store.read_temp_piece(&ids[1], 0).unwrap(),
        data(PIECE_SIZE, 1)
    );
    // Up to the cap, then refused (Busy: the HTTP interface answers 503).
    for _ in ids.len() - 1..temp::MAX_TEMP_UPLOADS {
        store.create_temp(&hash, 0, Some(1)).unwrap();
    }
    assert!(matches!(
        store.create_temp(&hash, 0, Some(1)),
        Err(ShardStoreError::Busy(_))
    ));
    // One finished: room for one more.
    store.abort(&ids[1]).unwrap();
    store.create_temp(&hash, 0, Some(1)).unwrap();
}
