use super::*;

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
    store.commit(&id, bytes.len() as u64).unwrap();
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
    store.commit(&id, 0).unwrap();
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
        store.commit(&id, bytes.len() as u64).is_err(),
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
    store.commit(&id, bytes.len() as u64).unwrap();
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
    assert!(store.commit(&id, 5).is_err());
    store.commit(&id, bytes.len() as u64).unwrap();
    assert_eq!(read_all(&store, &hash, 4).unwrap(), bytes);
}
