//! The embedded metadata engine: one SQLite database (WAL, `synchronous=FULL`, so a commit is
//! on disk before it is acknowledged).
//!
//! Tables: `versions` (every version of every name), `live` (the latest version of each name
//! whose latest version is not a delete marker; what listings read) and `contents` (size and
//! shard placement per content hash). Version numbers are allocated inside an immediate
//! transaction, so concurrent writers get 1, 2, 3 … with no gap and no duplicate.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dos_protocol::{
    BlockHashes, ChangeCursor, ContentHash, EntryKind, ListPage, ObjectName, PosixAttrs, ServerId,
    VersionRecord, now_ns,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::listing::{AtRows, PageBuilder, Step};
use crate::{
    ContentRecord, ListQuery, MetadataError, MetadataStore, NewVersion, PlacementMove,
    VersionsFrom, apply_moves,
};

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    name    TEXT    NOT NULL,
    version INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    hash    BLOB,
    mtime   INTEGER NOT NULL,
    mode    INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    uid     INTEGER,
    gid     INTEGER,
    rdev    INTEGER NOT NULL DEFAULT 0,
    atime   INTEGER,
    ctime   INTEGER,
    link    INTEGER,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_hash ON versions(hash);
CREATE TABLE IF NOT EXISTS live (
    name    TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    hash    BLOB,
    mtime   INTEGER NOT NULL,
    mode    INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    uid     INTEGER,
    gid     INTEGER,
    rdev    INTEGER NOT NULL DEFAULT 0,
    atime   INTEGER,
    ctime   INTEGER,
    link    INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contents (
    hash      BLOB    NOT NULL PRIMARY KEY,
    size      INTEGER NOT NULL,
    placement TEXT    NOT NULL,
    touched   INTEGER NOT NULL DEFAULT 0,
    blake3_blocks BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
";

/// Adds the columns that a database created before them lacks: `touched` and `blake3_blocks`
/// of `contents` (content stored before block hashes were recorded has none), and the POSIX
/// attributes of versions (versions made before them have no owner recorded, and their
/// ctime is their mtime).
fn migrate(conn: &Connection) -> Result<(), MetadataError> {
    let mut columns = vec![
        ("contents", "touched", "INTEGER NOT NULL DEFAULT 0"),
        ("contents", "blake3_blocks", "BLOB NOT NULL DEFAULT x''"),
    ];
    for table in ["versions", "live"] {
        columns.extend([
            (table, "uid", "INTEGER"),
            (table, "gid", "INTEGER"),
            (table, "rdev", "INTEGER NOT NULL DEFAULT 0"),
            (table, "atime", "INTEGER"),
            (table, "ctime", "INTEGER"),
            (table, "link", "INTEGER"),
        ]);
    }
    for (table, column, ty) in columns {
        let present = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))
            .and_then(|mut s| s.exists([column]))
            .map_err(db_err)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .map_err(db_err)?;
        }
    }
    Ok(())
}

fn db_err(e: rusqlite::Error) -> MetadataError {
    MetadataError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, MetadataError> {
        let conn = Connection::open(path).map_err(db_err)?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self, MetadataError> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> Result<Self, MetadataError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, MetadataError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, MetadataError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| MetadataError::Unavailable("sqlite connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| MetadataError::Unavailable(format!("metadata task failed: {e}")))?
    }
}

fn i64_of(v: u64) -> Result<i64, MetadataError> {
    i64::try_from(v).map_err(|_| MetadataError::BadRequest(format!("{v} is out of range")))
}

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<Result<VersionRecord, MetadataError>> {
    let name: String = row.get(0)?;
    let version: i64 = row.get(1)?;
    let size: i64 = row.get(2)?;
    let hash: Option<Vec<u8>> = row.get(3)?;
    let mtime_ns: i64 = row.get(4)?;
    let mode: i64 = row.get(5)?;
    let kind: String = row.get(6)?;
    let uid: Option<i64> = row.get(7)?;
    let gid: Option<i64> = row.get(8)?;
    let rdev: i64 = row.get(9)?;
    let atime_ns: Option<i64> = row.get(10)?;
    let ctime_ns: Option<i64> = row.get(11)?;
    // Stored bit for bit (SQLite integers are signed).
    let link: Option<i64> = row.get(12)?;
    Ok((|| {
        let corrupt = |what: &str| MetadataError::Corrupt(format!("{what} of {name:?}"));
        Ok(VersionRecord {
            name: ObjectName::new(name.clone()).map_err(|_| corrupt("name"))?,
            version: u64::try_from(version).map_err(|_| corrupt("version"))?,
            size: u64::try_from(size).map_err(|_| corrupt("size"))?,
            hash: match hash {
                None => None,
                Some(h) => Some(ContentHash(h.try_into().map_err(|_| corrupt("hash"))?)),
            },
            mtime_ns,
            mode: u32::try_from(mode).map_err(|_| corrupt("mode"))?,
            kind: EntryKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
            posix: PosixAttrs {
                uid: uid
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| corrupt("uid"))?,
                gid: gid
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| corrupt("gid"))?,
                rdev: u32::try_from(rdev).map_err(|_| corrupt("rdev"))?,
                atime_ns,
                link: link.map(|l| l as u64),
            },
            ctime_ns: ctime_ns.unwrap_or(mtime_ns),
        })
    })())
}

const COLUMNS: &str =
    "name, version, size, hash, mtime, mode, kind, uid, gid, rdev, atime, ctime, link";
const PLACEHOLDERS: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13";

fn collect_versions(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<VersionRecord>, MetadataError> {
    let rows = stmt.query_map(params, version_from_row).map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(db_err)??);
    }
    Ok(out)
}

#[async_trait]
impl MetadataStore for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn add_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<VersionRecord, MetadataError> {
        let name = name.clone();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let rec = insert_version(&tx, name, &new)?;
            tx.commit().map_err(db_err)?;
            Ok(rec)
        })
        .await
    }

    async fn add_version_with_content(
        &self,
        name: &ObjectName,
        new: NewVersion,
        content: &ContentRecord,
    ) -> Result<VersionRecord, MetadataError> {
        let (name, content) = (name.clone(), content.clone());
        // One transaction, so one commit (one WAL fsync) for a new object.
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            write_content(&tx, &content)?;
            let rec = insert_version(&tx, name, &new)?;
            tx.commit().map_err(db_err)?;
            Ok(rec)
        })
        .await
    }

    async fn add_known_version(
        &self,
        name: &ObjectName,
        new: NewVersion,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        let Some(hash) = new.hash else {
            return Ok(None);
        };
        let name = name.clone();
        // The touch and the version in one commit (one WAL fsync per dedup write).
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let touched = tx
                .execute(
                    "UPDATE contents SET touched = ?2 WHERE hash = ?1",
                    params![hash.0.to_vec(), now_ns()],
                )
                .map_err(db_err)?;
            if touched == 0 {
                return Ok(None);
            }
            let rec = insert_version(&tx, name, &new)?;
            tx.commit().map_err(db_err)?;
            Ok(Some(rec))
        })
        .await
    }

    async fn get_version(
        &self,
        name: &ObjectName,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, MetadataError> {
        let name = name.clone();
        if version.is_some_and(|v| i64::try_from(v).is_err()) {
            // No version that large can exist.
            return Ok(None);
        }
        self.with_conn(move |conn| {
            let row = match version {
                Some(v) => conn
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM versions WHERE name = ?1 AND version = ?2"),
                        params![name.as_str(), i64_of(v)?],
                        version_from_row,
                    )
                    .optional(),
                None => conn
                    .query_row(
                        &format!(
                            "SELECT {COLUMNS} FROM versions WHERE name = ?1 \
                             ORDER BY version DESC LIMIT 1"
                        ),
                        [name.as_str()],
                        version_from_row,
                    )
                    .optional(),
            };
            row.map_err(db_err)?.transpose()
        })
        .await
    }

    async fn list_versions(
        &self,
        from: &VersionsFrom,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        let from = from.clone();
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(1000);
        self.with_conn(move |conn| match from {
            VersionsFrom::Name(name, after) => {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM versions WHERE name = ?1 AND version > ?2 \
                         ORDER BY version LIMIT ?3"
                    ))
                    .map_err(db_err)?;
                collect_versions(&mut stmt, params![name.as_str(), i64_of(after)?, limit])
            }
            VersionsFrom::All(None) => {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM versions ORDER BY name, version LIMIT ?1"
                    ))
                    .map_err(db_err)?;
                collect_versions(&mut stmt, params![limit])
            }
            VersionsFrom::All(Some((name, after))) => {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM versions \
                         WHERE (name = ?1 AND version > ?2) OR name > ?1 \
                         ORDER BY name, version LIMIT ?3"
                    ))
                    .map_err(db_err)?;
                collect_versions(&mut stmt, params![name.as_str(), i64_of(after)?, limit])
            }
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, MetadataError> {
        let query = query.clone();
        self.with_conn(move |conn| list_page(conn, &query)).await
    }

    async fn list_changes(
        &self,
        prefix: &str,
        since_ns: Option<i64>,
        before: Option<&ChangeCursor>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, MetadataError> {
        let (prefix, before) = (prefix.to_string(), before.cloned());
        self.with_conn(move |conn| changes_page(conn, &prefix, since_ns, before.as_ref(), limit))
            .await
    }

    async fn get_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        let hash = *hash;
        self.with_conn(move |conn| read_content(conn, &hash)).await
    }

    async fn put_content(&self, record: &ContentRecord) -> Result<(), MetadataError> {
        let record = record.clone();
        self.with_conn(move |conn| write_content(conn, &record))
            .await
    }

    async fn update_placement(
        &self,
        hash: &ContentHash,
        moves: &[PlacementMove],
    ) -> Result<bool, MetadataError> {
        let (hash, moves) = (*hash, moves.to_vec());
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let Some(mut record) = read_content(&tx, &hash)? else {
                return Ok(false);
            };
            if !apply_moves(&mut record.placement, &moves) {
                return Ok(false);
            }
            let placement = serde_json::to_string(&record.placement)
                .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE contents SET placement = ?2 WHERE hash = ?1",
                params![hash.0.to_vec(), placement],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn touch_content(
        &self,
        hash: &ContentHash,
    ) -> Result<Option<ContentRecord>, MetadataError> {
        let hash = *hash;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            tx.execute(
                "UPDATE contents SET touched = ?2 WHERE hash = ?1",
                params![hash.0.to_vec(), now_ns()],
            )
            .map_err(db_err)?;
            let record = read_content(&tx, &hash)?;
            tx.commit().map_err(db_err)?;
            Ok(record)
        })
        .await
    }

    async fn list_contents(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<ContentRecord>, MetadataError> {
        let after = after.map_or_else(Vec::new, |h| h.0.to_vec());
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(1000);
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, size, placement, blake3_blocks FROM contents WHERE hash > ?1 \
                     ORDER BY hash LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![after, limit], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (hash, size, placement, blocks) = row.map_err(db_err)?;
                let hash = ContentHash(hash.try_into().map_err(|_| {
                    MetadataError::Corrupt("a content hash is not 32 bytes".into())
                })?);
                out.push(content_record(hash, size, &placement, &blocks)?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_version(&self, name: &ObjectName, version: u64) -> Result<bool, MetadataError> {
        let name = name.clone();
        let Ok(version) = i64::try_from(version) else {
            return Ok(false);
        };
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM versions WHERE name = ?1 AND version = ?2 \
                     AND version < (SELECT MAX(version) FROM versions WHERE name = ?1)",
                    params![name.as_str(), version],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_unused_content(
        &self,
        hash: &ContentHash,
        unused_since_ns: i64,
    ) -> Result<bool, MetadataError> {
        let hash = hash.0.to_vec();
        self.with_conn(move |conn| {
            // One statement: the reference check and the delete are atomic.
            let n = conn
                .execute(
                    "DELETE FROM contents WHERE hash = ?1 AND touched < ?2 \
                     AND NOT EXISTS (SELECT 1 FROM versions WHERE hash = ?1)",
                    params![hash, unused_since_ns],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }
}

/// Writes (or replaces) a content record, touched now.
fn write_content(conn: &Connection, record: &ContentRecord) -> Result<(), MetadataError> {
    crate::check_blocks(record)?;
    let placement = serde_json::to_string(&record.placement)
        .map_err(|e| MetadataError::Corrupt(e.to_string()))?;
    conn.execute(
        "INSERT OR REPLACE INTO contents (hash, size, placement, touched, blake3_blocks) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            record.hash.0.to_vec(),
            i64_of(record.size)?,
            placement,
            now_ns(),
            record.blocks.to_bytes()
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Appends the next version of `name` inside an immediate transaction (so the number is
/// allocated without a gap or a duplicate) and updates the live table.
fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    name: ObjectName,
    new: &NewVersion,
) -> Result<VersionRecord, MetadataError> {
    let latest: Option<i64> = tx
        .query_row(
            "SELECT MAX(version) FROM versions WHERE name = ?1",
            [name.as_str()],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let version = latest.unwrap_or(0) + 1;
    let hash = new.hash.map(|h| h.0.to_vec());
    let size = i64_of(new.size)?;
    let row = params![
        name.as_str(),
        version,
        size,
        hash,
        new.mtime_ns,
        new.mode,
        new.kind.as_str(),
        new.posix.uid,
        new.posix.gid,
        new.posix.rdev,
        new.posix.atime_ns,
        new.ctime_ns,
        new.posix.link.map(|l| l as i64)
    ];
    tx.execute(
        &format!("INSERT INTO versions ({COLUMNS}) VALUES ({PLACEHOLDERS})"),
        row,
    )
    .map_err(db_err)?;
    if new.hash.is_some() {
        tx.execute(
            &format!("INSERT OR REPLACE INTO live ({COLUMNS}) VALUES ({PLACEHOLDERS})"),
            row,
        )
        .map_err(db_err)?;
    } else {
        tx.execute("DELETE FROM live WHERE name = ?1", [name.as_str()])
            .map_err(db_err)?;
    }
    Ok(new.record(name, version as u64))
}

fn read_content(
    conn: &Connection,
    hash: &ContentHash,
) -> Result<Option<ContentRecord>, MetadataError> {
    let row: Option<(i64, String, Vec<u8>)> = conn
        .query_row(
            "SELECT size, placement, blake3_blocks FROM contents WHERE hash = ?1",
            [hash.0.to_vec()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db_err)?;
    row.map(|(size, placement, blocks)| content_record(*hash, size, &placement, &blocks))
        .transpose()
}

fn content_record(
    hash: ContentHash,
    size: i64,
    placement: &str,
    blocks: &[u8],
) -> Result<ContentRecord, MetadataError> {
    let placement: Vec<ServerId> = serde_json::from_str(placement)
        .map_err(|e| MetadataError::Corrupt(format!("placement of {hash}: {e}")))?;
    let size =
        u64::try_from(size).map_err(|_| MetadataError::Corrupt(format!("size of {hash}")))?;
    let blocks = BlockHashes::from_bytes(blocks)
        .filter(|b| b.fits(size))
        .ok_or_else(|| MetadataError::Corrupt(format!("block hashes of {hash}")))?;
    Ok(ContentRecord {
        hash,
        size,
        placement,
        blocks,
    })
}

/// One listing page over `live`, or (a listing at a moment) over `versions`, each name's
/// newest version made by then (grouping in [`PageBuilder`]). Common prefixes are skipped
/// with one range seek each, so a page costs O(page) rows however many names a prefix hides.
fn list_page(conn: &Connection, query: &ListQuery) -> Result<ListPage, MetadataError> {
    let mut builder = PageBuilder::new(query)?;
    let mut at_rows = AtRows::default();
    // Versions made before their ctime was recorded count at their mtime; SQLite takes the
    // other columns of a group from the row holding its MAX.
    let (table, at_filter) = match query.at {
        None => ("live", "AND ?3 IS NULL"),
        Some(_) => (
            "versions",
            "AND COALESCE(ctime, mtime) <= ?3 GROUP BY name HAVING version = MAX(version)",
        ),
    };
    let mut stmt_incl = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE name >= ?1 {at_filter} ORDER BY name LIMIT ?2"
        ))
        .map_err(db_err)?;
    let mut stmt_excl = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE name > ?1 {at_filter} ORDER BY name LIMIT ?2"
        ))
        .map_err(db_err)?;
    loop {
        let batch = builder.batch();
        let (key, inclusive) = builder.start().clone();
        let stmt = if inclusive {
            &mut stmt_incl
        } else {
            &mut stmt_excl
        };
        let rows = collect_versions(stmt, params![key, batch as i64, query.at])?;
        let exhausted = rows.len() < batch;
        let mut jumped = false;
        for rec in rows {
            let step = if query.at.is_some() {
                at_rows.offer(&mut builder, rec)
            } else {
                builder.offer(rec)
            };
            match step {
                Step::Next => {}
                Step::Jump => {
                    jumped = true;
                    break;
                }
                Step::Done => return Ok(builder.finish()),
            }
        }
        if exhausted && !jumped {
            return Ok(builder.finish());
        }
    }
}

/// Up to `limit` versions under `prefix` made at or after `since`, newest first.
fn changes_page(
    conn: &Connection,
    prefix: &str,
    since: Option<i64>,
    before: Option<&ChangeCursor>,
    limit: usize,
) -> Result<Vec<VersionRecord>, MetadataError> {
    let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(1000);
    let since = since.unwrap_or(i64::MIN);
    let after = match before {
        Some(_) => "AND (COALESCE(ctime, mtime), name, version) < (?4, ?5, ?6)",
        None => "AND ?4 IS NULL AND ?5 IS NULL AND ?6 IS NULL",
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM versions WHERE name >= ?1 \
             AND substr(name, 1, length(?1)) = ?1 AND COALESCE(ctime, mtime) >= ?2 {after} \
             ORDER BY COALESCE(ctime, mtime) DESC, name DESC, version DESC LIMIT ?3"
        ))
        .map_err(db_err)?;
    let (c, n, v) = match before {
        Some(b) => (
            Some(b.ctime_ns),
            Some(b.name.as_str().to_string()),
            Some(i64_of(b.version)?),
        ),
        None => (None, None, None),
    };
    collect_versions(&mut stmt, params![prefix, since, limit, c, n, v])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        crate::contract::run_all(|| async { SqliteStore::in_memory().unwrap() }).await;
    }

    /// Random prefixes, cursors, delimiters and limits: never a panic, every page sorted,
    /// inside the prefix and after the cursor.
    #[test]
    fn listing_requests_are_safe() {
        use proptest::prelude::*;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = SqliteStore::in_memory().unwrap();
        rt.block_on(async {
            for n in ["a", "a/b", "a/b/c", "a/bc", "b", "é/x", "z/y/x", "a0", "a/"] {
                if let Ok(name) = ObjectName::new(n) {
                    crate::contract::put(&store, &name, n.as_bytes()).await;
                }
            }
        });
        proptest!(|(prefix in "[a-zé/0]{0,4}", cursor in proptest::option::of("\\PC{0,6}"),
                    delim in proptest::option::of(proptest::char::any()), limit in 0usize..20000)| {
            let q = ListQuery { prefix: prefix.clone(), delimiter: delim, cursor: cursor.clone(), limit, at: None };
            if let Ok(page) = rt.block_on(store.list(&q)) {
                let names: Vec<&str> = page.entries.iter().map(|e| e.name.as_str()).collect();
                let mut sorted = names.clone();
                sorted.sort();
                prop_assert_eq!(&names, &sorted);
                for n in &names {
                    prop_assert!(n.starts_with(&prefix));
                    if let Some(c) = &cursor && c.as_str() >= prefix.as_str() {
                        prop_assert!(*n > c.as_str());
                    }
                }
            }
        });
    }

    /// A database made before `touched` and `blocks` existed opens, keeps its records (with
    /// no block hashes) and stores new ones with them.
    #[tokio::test]
    async fn an_older_database_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let old = ContentHash::of(b"old");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE contents (hash BLOB NOT NULL PRIMARY KEY, size INTEGER NOT NULL, \
                 placement TEXT NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO contents (hash, size, placement) VALUES (?1, 3000000, '[\"a\"]')",
                [old.0.to_vec()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let got = store.get_content(&old).await.unwrap().unwrap();
        assert_eq!(got.size, 3_000_000);
        assert!(got.blocks.is_empty(), "recorded before block hashes");
        let new = ContentRecord {
            hash: ContentHash::of(b"new"),
            size: 3_000_000,
            placement: vec![ServerId("a".into())],
            blocks: BlockHashes::new(vec![old, old, old]),
        };
        store.put_content(&new).await.unwrap();
        assert_eq!(store.get_content(&new.hash).await.unwrap(), Some(new));
    }

    /// Versions of a database made before the POSIX attributes read back with no owner and
    /// their mtime as ctime; new ones keep theirs, in the old tables.
    #[tokio::test]
    async fn older_versions_gain_the_posix_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let name = ObjectName::new("old").unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            for table in ["versions", "live"] {
                let key = if table == "live" {
                    "name TEXT NOT NULL PRIMARY KEY, version INTEGER NOT NULL"
                } else {
                    "name TEXT NOT NULL, version INTEGER NOT NULL"
                };
                let pk = if table == "live" {
                    ""
                } else {
                    ", PRIMARY KEY (name, version)"
                };
                conn.execute_batch(&format!(
                    "CREATE TABLE {table} ({key}, size INTEGER NOT NULL, hash BLOB, \
                     mtime INTEGER NOT NULL, mode INTEGER NOT NULL, kind TEXT NOT NULL{pk}) \
                     WITHOUT ROWID;"
                ))
                .unwrap();
                conn.execute(
                    &format!(
                        "INSERT INTO {table} (name, version, size, hash, mtime, mode, kind) \
                         VALUES ('old', 1, 1, ?1, 42, 420, 'file')"
                    ),
                    [ContentHash::of(b"x").0.to_vec()],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let v = store.get_version(&name, None).await.unwrap().unwrap();
        assert_eq!(
            (v.posix, v.ctime_ns, v.mode),
            (PosixAttrs::default(), 42, 0o644)
        );
        let posix = PosixAttrs {
            uid: Some(1000),
            gid: Some(100),
            rdev: 0,
            atime_ns: Some(41),
            link: None,
        };
        let new = NewVersion {
            size: 1,
            hash: Some(ContentHash::of(b"x")),
            mtime_ns: 42,
            mode: 0o600,
            kind: EntryKind::File,
            posix,
            ctime_ns: 43,
        };
        let made = store.add_version(&name, new.clone()).await.unwrap();
        assert_eq!(made, new.record(name.clone(), 2));
        let v = store.get_version(&name, None).await.unwrap().unwrap();
        assert_eq!(v, made);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let name = ObjectName::new("a").unwrap();
        {
            let store = SqliteStore::open(&path).unwrap();
            crate::contract::put(&store, &name, b"x").await;
        }
        let store = SqliteStore::open(&path).unwrap();
        let v = store.get_version(&name, None).await.unwrap().unwrap();
        assert_eq!(v.version, 1);
    }
}
