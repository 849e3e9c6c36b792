//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a
//! committed batch survives `kill -9` and power loss. One connection writes
//! (the pipeline thread); readers take a connection from a small pool (WAL
//! lets them read while the writer commits).

use std::collections::HashMap;
use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{
    Counter, DedupeRecord, DirectRecord, Kind, Original, Recovered, Result, RoomRecord, Store,
    StoreError, Write, MAX_DEVICE_CURSORS, MAX_UNREAD,
};

/// `counters` names of the seq floors: `room_floor/BUCKET`, `inbox_floor/BUCKET`.
const ROOM_FLOOR: &str = "room_floor";
const INBOX_FLOOR: &str = "inbox_floor";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS room_messages (
    room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
    ts INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS room_messages_ts ON room_messages (ts);
-- Last seq per room, kept even when retention dropped every message, until
-- the room is forgotten (its seq then lives on in a floor).
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directs (
    gid INTEGER PRIMARY KEY, recipient TEXT NOT NULL, seq INTEGER NOT NULL,
    sender TEXT NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS directs_inbox ON directs (recipient, seq);
CREATE INDEX IF NOT EXISTS directs_pair ON directs (sender, recipient, gid);
CREATE INDEX IF NOT EXISTS directs_ts ON directs (ts);
CREATE TABLE IF NOT EXISTS inboxes (user TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    user TEXT NOT NULL, device TEXT NOT NULL, upto INTEGER NOT NULL,
    PRIMARY KEY (user, device)
) WITHOUT ROWID;
-- Keyed by what it protects: the same id for another room or user is
-- another message, not a duplicate.
CREATE TABLE IF NOT EXISTS dedupe (
    user TEXT NOT NULL, target TEXT NOT NULL, id TEXT NOT NULL,
    seq INTEGER NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (user, target, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_ts ON dedupe (ts);
-- Counters that must survive retention: `last_gid`, the highest direct
-- message gid ever committed (gids are never reused, even when every
-- direct message was trimmed), and the seq floors of forgotten rooms and
-- inboxes (`room_floor/BUCKET`, `inbox_floor/BUCKET`; at most 2 x 4096).
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- Read positions: `key` is `room:NAME` (a room seq) or `user:PEER` (an
-- inbox seq of `user`).
CREATE TABLE IF NOT EXISTS reads (
    user TEXT NOT NULL, key TEXT NOT NULL, upto INTEGER NOT NULL,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reads_key ON reads (key);
";

/// Changes to databases written by earlier versions, in order; `PRAGMA
/// user_version` counts those applied. Each runs in one transaction.
const MIGRATIONS: &[&str] = &[
    // 1: dedupe was keyed by (user, id) only, so an id reused for another
    // room was acked as a duplicate and never stored.
    "CREATE TABLE dedupe_v1 (
         user TEXT NOT NULL, target TEXT NOT NULL, id TEXT NOT NULL,
         seq INTEGER NOT NULL, ts INTEGER NOT NULL,
         PRIMARY KEY (user, target, id)
     ) WITHOUT ROWID;
     INSERT INTO dedupe_v1 (user, target, id, seq, ts) SELECT user, target, id, seq, ts FROM dedupe;
     DROP TABLE dedupe;
     ALTER TABLE dedupe_v1 RENAME TO dedupe;
     CREATE INDEX dedupe_ts ON dedupe (ts);",
    // 2: edits, recalls and read receipts are entries of rooms and inboxes
    // (`kind`, `target`), and a message records its last change. The
    // index counts a conversation's unread messages.
    "ALTER TABLE room_messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE room_messages ADD COLUMN target INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE room_messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE room_messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE directs ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE directs ADD COLUMN target INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE directs ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE directs ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX directs_unread ON directs (recipient, sender, seq);",
];

/// The columns `room_row` reads, in its order.
const ROOM_COLUMNS: &str = "room, seq, sender, ts, body, kind, target, edited, recalled";
/// The columns `direct_row` reads, in its order.
const DIRECT_COLUMNS: &str =
    "gid, recipient, seq, sender, ts, body, kind, target, edited, recalled";

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", n + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        let message = e.to_string();
        match e.sqlite_error_code() {
            Some(Code::DiskFull) => StoreError::Full(message),
            Some(Code::DatabaseCorrupt | Code::NotADatabase) => StoreError::Corrupt(message),
            Some(
                Code::CannotOpen
                | Code::DatabaseBusy
                | Code::DatabaseLocked
                | Code::SystemIoFailure
                | Code::ReadOnly
                | Code::PermissionDenied
                | Code::OutOfMemory
                | Code::FileLockingProtocolFailed
                | Code::NoLargeFileSupport
                | Code::OperationInterrupted,
            ) => StoreError::Unavailable(message),
            _ => StoreError::Internal(message),
        }
    }
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `DIR/switchboard.db`.
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join("switchboard.db");
        let mut writer = open(&path)?;
        writer.execute_batch(SCHEMA)?;
        migrate(&mut writer)?;
        // Fail now, not on the first message, if the file is unusable.
        let check: String = writer.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(format!(
                "database integrity check failed: {check}"
            )));
        }
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => open(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock();
        if pool.len() < 8 {
            pool.push(conn);
        }
        Ok(result?)
    }
}

fn room_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRecord> {
    Ok(RoomRecord {
        room: r.get(0)?,
        seq: r.get(1)?,
        from: r.get(2)?,
        ts: r.get(3)?,
        body: r.get(4)?,
        kind: Kind::from_code(r.get(5)?),
        target: r.get(6)?,
        edited: r.get(7)?,
        recalled: r.get(8)?,
        sender: None,
    })
}

fn direct_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DirectRecord> {
    direct_at(r, 0)
}

/// A `DIRECT_COLUMNS` record starting at column `i`.
fn direct_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<DirectRecord> {
    Ok(DirectRecord {
        gid: r.get(i)?,
        to: r.get(i + 1)?,
        seq: r.get(i + 2)?,
        from: r.get(i + 3)?,
        ts: r.get(i + 4)?,
        body: r.get(i + 5)?,
        kind: Kind::from_code(r.get(i + 6)?),
        target: r.get(i + 7)?,
        edited: r.get(i + 8)?,
        recalled: r.get(i + 9)?,
        sender: None,
    })
}

impl Store for SqliteStore {
    fn recover(&self, dedupe_since: u64) -> Result<Recovered> {
        let conn = self.writer.lock();
        let counters = |sql: &str| -> rusqlite::Result<Vec<Counter>> {
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| {
                Ok(Counter {
                    name: r.get(0)?,
                    seq: r.get(1)?,
                    last_ts: r.get(2)?,
                })
            })?;
            rows.collect()
        };
        // The newest held message's ts through the (room, seq) keys: one
        // index probe per counter.
        let rooms = counters(
            "SELECT r.room, r.last_seq, coalesce((SELECT m.ts FROM room_messages m
                 WHERE m.room = r.room ORDER BY m.seq DESC LIMIT 1), 0) FROM rooms r",
        )?;
        let inboxes = counters(
            "SELECT i.user, i.last_seq, coalesce((SELECT d.ts FROM directs d
                 WHERE d.recipient = i.user ORDER BY d.seq DESC LIMIT 1), 0) FROM inboxes i",
        )?;
        let floors = |prefix: &str| -> rusqlite::Result<Vec<(u32, u64)>> {
            let mut stmt =
                conn.prepare("SELECT name, value FROM counters WHERE name >= ?1 AND name < ?2")?;
            let rows = stmt
                .query_map(params![format!("{prefix}/"), format!("{prefix}0")], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
                })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, value) = row?;
                if let Some(bucket) = name.rsplit('/').next().and_then(|b| b.parse().ok()) {
                    out.push((bucket, value));
                }
            }
            Ok(out)
        };
        let room_floors = floors(ROOM_FLOOR)?;
        let inbox_floors = floors(INBOX_FLOOR)?;
        // `max(gid)` too: a database written before `counters` existed.
        let last_gid: Option<u64> = conn.query_row(
            "SELECT max(coalesce((SELECT max(gid) FROM directs), 0),
                        coalesce((SELECT value FROM counters WHERE name = 'last_gid'), 0))",
            [],
            |r| r.get(0),
        )?;
        let mut stmt =
            conn.prepare("SELECT user, id, target, seq, ts FROM dedupe WHERE ts >= ?1")?;
        let dedupe = stmt
            .query_map([dedupe_since], |r| {
                Ok(DedupeRecord {
                    user: r.get(0)?,
                    id: r.get(1)?,
                    target: r.get(2)?,
                    seq: r.get(3)?,
                    ts: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Recovered {
            rooms,
            inboxes,
            room_floors,
            inbox_floors,
            last_gid: last_gid.unwrap_or(0),
            dedupe,
        })
    }

    fn commit(&self, batch: &[Write]) -> Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction()?;
        {
            let mut room = tx.prepare_cached(
                "INSERT INTO room_messages (room, seq, sender, ts, body, kind, target)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut room_seq = tx.prepare_cached(
                "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2)
                 ON CONFLICT (room) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            let mut direct = tx.prepare_cached(
                "INSERT INTO directs (gid, recipient, seq, sender, ts, body, kind, target)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut inbox_seq = tx.prepare_cached(
                "INSERT INTO inboxes (user, last_seq) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            let mut dedupe = tx.prepare_cached(
                "INSERT OR REPLACE INTO dedupe (user, target, id, seq, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut trim_room =
                tx.prepare_cached("DELETE FROM room_messages WHERE room = ?1 AND seq <= ?2")?;
            let mut trim_inbox =
                tx.prepare_cached("DELETE FROM directs WHERE recipient = ?1 AND seq <= ?2")?;
            let mut counter = tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            )?;
            let mut cursor = tx.prepare_cached(
                "INSERT INTO cursors (user, device, upto) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, device) DO UPDATE SET upto = max(upto, excluded.upto)",
            )?;
            let mut cap_cursors = tx.prepare_cached(
                "DELETE FROM cursors WHERE user = ?1 AND device NOT IN
                     (SELECT device FROM cursors WHERE user = ?1 ORDER BY upto DESC, device LIMIT ?2)",
            )?;
            // Last seqs are upserted once per room/inbox per batch, not per
            // message.
            let mut last_room: HashMap<&str, u64> = HashMap::new();
            let mut last_inbox: HashMap<&str, u64> = HashMap::new();
            let mut last_gid = None;
            let mut cursor_users: Vec<&str> = Vec::new();
            for write in batch {
                match write {
                    Write::Room(m) => {
                        room.execute(params![
                            m.room,
                            m.seq,
                            m.from,
                            m.ts,
                            m.body,
                            m.kind.code(),
                            m.target
                        ])?;
                        let last = last_room.entry(m.room.as_str()).or_insert(0);
                        *last = (*last).max(m.seq);
                    }
                    Write::Direct(d) => {
                        direct.execute(params![
                            d.gid,
                            d.to,
                            d.seq,
                            d.from,
                            d.ts,
                            d.body,
                            d.kind.code(),
                            d.target
                        ])?;
                        let last = last_inbox.entry(d.to.as_str()).or_insert(0);
                        *last = (*last).max(d.seq);
                        last_gid = last_gid.max(Some(d.gid));
                    }
                    Write::Dedupe(d) => {
                        dedupe.execute(params![d.user, d.target, d.id, d.seq, d.ts])?;
                    }
                    Write::Cursor { user, device, upto } => {
                        cursor.execute(params![user, device, upto])?;
                        cursor_users.push(user.as_str());
                    }
                    Write::TrimRoom { room, upto } => {
                        trim_room.execute(params![room, upto])?;
                    }
                    Write::TrimInbox { user, upto } => {
                        trim_inbox.execute(params![user, upto])?;
                    }
                    Write::Amend { original, body, ts } => {
                        let (body, edited, recalled) = match body {
                            Some(body) => (body.as_str(), *ts, 0),
                            None => ("null", 0, *ts),
                        };
                        let recall = recalled != 0;
                        match original {
                            Original::Room { room, seq } => {
                                tx.execute(
                                    "UPDATE room_messages SET body = ?3,
                                         edited = max(edited, ?4), recalled = ?5
                                     WHERE room = ?1 AND seq = ?2",
                                    params![room, seq, body, edited, recalled],
                                )?;
                                if recall {
                                    tx.execute(
                                        "UPDATE room_messages SET body = 'null'
                                         WHERE room = ?1 AND kind = ?2 AND target = ?3",
                                        params![room, Kind::Edit.code(), seq],
                                    )?;
                                }
                            }
                            Original::Direct { to, gid } => {
                                tx.execute(
                                    "UPDATE directs SET body = ?2,
                                         edited = max(edited, ?3), recalled = ?4
                                     WHERE gid = ?1",
                                    params![gid, body, edited, recalled],
                                )?;
                                if recall {
                                    tx.execute(
                                        "UPDATE directs SET body = 'null'
                                         WHERE recipient = ?1 AND kind = ?2 AND target = ?3",
                                        params![to, Kind::Edit.code(), gid],
                                    )?;
                                }
                            }
                        }
                    }
                    Write::ReadPosition { user, key, upto } => {
                        tx.prepare_cached(
                            "INSERT INTO reads (user, key, upto) VALUES (?1, ?2, ?3)
                             ON CONFLICT (user, key) DO UPDATE SET upto = max(upto, excluded.upto)",
                        )?
                        .execute(params![user, key, upto])?;
                    }
                    Write::ForgetRoom { room } => {
                        tx.execute("DELETE FROM room_messages WHERE room = ?1", [room])?;
                        tx.execute("DELETE FROM rooms WHERE room = ?1", [room])?;
                        tx.execute("DELETE FROM reads WHERE key = ?1", [format!("room:{room}")])?;
                    }
                    Write::ForgetInbox { user } => {
                        tx.execute("DELETE FROM directs WHERE recipient = ?1", [user])?;
                        tx.execute("DELETE FROM inboxes WHERE user = ?1", [user])?;
                        tx.execute("DELETE FROM cursors WHERE user = ?1", [user])?;
                        // Positions in this user's inbox; its seqs go on
                        // from the floor, so none of them can apply again.
                        tx.execute(
                            "DELETE FROM reads WHERE user = ?1 AND key >= 'user:' AND key < 'user;'",
                            [user],
                        )?;
                    }
                    Write::RoomFloor { bucket, value } => {
                        counter.execute(params![format!("{ROOM_FLOOR}/{bucket}"), value])?;
                    }
                    Write::InboxFloor { bucket, value } => {
                        counter.execute(params![format!("{INBOX_FLOOR}/{bucket}"), value])?;
                    }
                }
            }
            cursor_users.sort_unstable();
            cursor_users.dedup();
            for user in cursor_users {
                cap_cursors.execute(params![user, MAX_DEVICE_CURSORS as u64])?;
            }
            for (name, seq) in last_room {
                room_seq.execute(params![name, seq])?;
            }
            for (user, seq) in last_inbox {
                inbox_seq.execute(params![user, seq])?;
            }
            if let Some(gid) = last_gid {
                counter.execute(params!["last_gid", gid])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn room_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROOM_COLUMNS} FROM room_messages
                 WHERE room = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![room, after, limit as u64], room_row)?;
            rows.collect()
        })
    }

    fn room_before(&self, room: &str, before: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROOM_COLUMNS} FROM room_messages
                 WHERE room = ?1 AND seq < ?2 AND kind = 0 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let mut rows = stmt
                .query_map(params![room, before, limit as u64], room_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn room_oldest(&self, room: &str) -> Result<Option<u64>> {
        self.read(|c| {
            c.query_row(
                "SELECT min(seq) FROM room_messages WHERE room = ?1",
                [room],
                |r| r.get(0),
            )
        })
    }

    fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<DirectRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DIRECT_COLUMNS} FROM directs
                 WHERE recipient = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![user, after, limit as u64], direct_row)?;
            rows.collect()
        })
    }

    fn inbox_oldest(&self, user: &str) -> Result<Option<u64>> {
        self.read(|c| {
            c.query_row(
                "SELECT min(seq) FROM directs WHERE recipient = ?1",
                [user],
                |r| r.get(0),
            )
        })
    }

    fn conversation(
        &self,
        a: &str,
        b: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<DirectRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                &format!("SELECT {DIRECT_COLUMNS} FROM (
                   SELECT * FROM directs WHERE sender = ?1 AND recipient = ?2 AND gid < ?3 AND kind = 0
                   UNION ALL
                   SELECT * FROM directs WHERE sender = ?2 AND recipient = ?1 AND gid < ?3 AND kind = 0
                 ) ORDER BY gid DESC LIMIT ?4"),
            )?;
            let mut rows = stmt
                .query_map(params![a, b, before, limit as u64], direct_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn cursor(&self, user: &str, device: &str) -> Result<u64> {
        self.read(|c| {
            c.query_row(
                "SELECT upto FROM cursors WHERE user = ?1 AND device = ?2",
                [user, device],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
        })
    }

    fn room_entry(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ROOM_COLUMNS} FROM room_messages WHERE room = ?1 AND seq = ?2"
            ))?
            .query_row(params![room, seq], room_row)
            .optional()
        })
    }

    fn direct_entry(&self, gid: u64) -> Result<Option<DirectRecord>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {DIRECT_COLUMNS} FROM directs WHERE gid = ?1"
            ))?
            .query_row([gid], direct_row)
            .optional()
        })
    }

    fn read_position(&self, user: &str, key: &str) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached("SELECT upto FROM reads WHERE user = ?1 AND key = ?2")?
                .query_row([user, key], |r| r.get(0))
                .optional()
                .map(|v| v.unwrap_or(0))
        })
    }

    fn read_positions(&self, user: &str) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT key, upto FROM reads WHERE user = ?1")?;
            let rows = stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn peers(&self, user: &str, limit: usize) -> Result<Vec<(String, u64, u64)>> {
        self.read(|c| {
            // The newest gid per peer through the (sender, recipient, gid)
            // and (recipient, seq) indexes, then that message's ts.
            let mut stmt = c.prepare_cached(
                "SELECT p.peer, p.last, d.ts FROM (
                     SELECT peer, max(gid) AS last FROM (
                         SELECT recipient AS peer, gid FROM directs WHERE sender = ?1 AND kind = 0
                         UNION ALL
                         SELECT sender AS peer, gid FROM directs WHERE recipient = ?1 AND kind = 0
                     ) GROUP BY peer ORDER BY last DESC LIMIT ?2
                 ) p JOIN directs d ON d.gid = p.last",
            )?;
            let rows = stmt.query_map(params![user, limit as u64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })
    }

    fn room_last(&self, room: &str) -> Result<Option<(u64, u64)>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT seq, ts FROM room_messages WHERE room = ?1 AND kind = 0
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([room], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
        })
    }

    fn last_from(&self, user: &str, peer: &str) -> Result<Option<u64>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT max(seq) FROM directs WHERE recipient = ?1 AND sender = ?2 AND kind = 0",
            )?
            .query_row([user, peer], |r| r.get(0))
        })
    }

    fn unread_direct(&self, user: &str, peer: &str, after: u64) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM directs WHERE recipient = ?1 AND sender = ?2
                 AND seq > ?3 AND kind = 0 AND recalled = 0 LIMIT ?4)",
            )?
            .query_row(params![user, peer, after, MAX_UNREAD], |r| r.get(0))
        })
    }

    fn unread_room(&self, room: &str, user: &str, after: u64) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM room_messages WHERE room = ?1 AND seq > ?3
                 AND kind = 0 AND recalled = 0 AND sender != ?2 LIMIT ?4)",
            )?
            .query_row(params![room, user, after, MAX_UNREAD], |r| r.get(0))
        })
    }

    fn trim(&self, older_than: u64, dedupe_before: u64) -> Result<()> {
        let conn = self.writer.lock();
        conn.execute("DELETE FROM room_messages WHERE ts < ?1", [older_than])?;
        conn.execute("DELETE FROM directs WHERE ts < ?1", [older_than])?;
        conn.execute("DELETE FROM dedupe WHERE ts < ?1", [dedupe_before])?;
        Ok(())
    }

    fn check(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM rooms", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-sqlite-{name}-{}-{}",
            std::process::id(),
            crate::hub::unix_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A database written before dedupe was keyed by target is migrated:
    /// its entries are kept, and the same id may then be used per target.
    #[test]
    fn an_old_dedupe_table_is_migrated_to_per_target_keys() {
        let dir = temp_dir("migrate");
        {
            let old = Connection::open(dir.join("switchboard.db")).unwrap();
            old.execute_batch(
                "CREATE TABLE dedupe (
                     user TEXT NOT NULL, id TEXT NOT NULL, target TEXT NOT NULL,
                     seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                     PRIMARY KEY (user, id)
                 ) WITHOUT ROWID;
                 CREATE INDEX dedupe_ts ON dedupe (ts);
                 INSERT INTO dedupe VALUES ('ann', '7', 'room:a', 3, 100);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        let kept = store.recover(0).unwrap().dedupe;
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].target.as_str(), kept[0].seq), ("room:a", 3));
        let again = DedupeRecord {
            user: "ann".into(),
            id: "7".into(),
            target: "room:b".into(),
            seq: 1,
            ts: 200,
        };
        store.commit(&[Write::Dedupe(again)]).unwrap();
        assert_eq!(store.recover(0).unwrap().dedupe.len(), 2);
        drop(store);
        // Opening again applies nothing twice.
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.recover(0).unwrap().dedupe.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database of version 1 (before edits, recalls and receipts) gets
    /// the new columns; what it held reads as plain messages.
    #[test]
    fn a_version_1_database_gains_kinds_and_keeps_its_messages() {
        let dir = temp_dir("migrate-v2");
        {
            let old = Connection::open(dir.join("switchboard.db")).unwrap();
            old.execute_batch(
                "CREATE TABLE room_messages (
                     room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                     ts INTEGER NOT NULL, body TEXT NOT NULL,
                     PRIMARY KEY (room, seq)
                 ) WITHOUT ROWID;
                 CREATE TABLE directs (
                     gid INTEGER PRIMARY KEY, recipient TEXT NOT NULL, seq INTEGER NOT NULL,
                     sender TEXT NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL
                 );
                 INSERT INTO room_messages VALUES ('r', 1, 'ann', 5, '{\"n\":1}');
                 INSERT INTO directs VALUES (7, 'bob', 1, 'ann', 5, '\"hi\"');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        let room = store.room_after("r", 0, 10).unwrap();
        assert_eq!(room.len(), 1);
        assert_eq!(
            (room[0].kind, room[0].edited, room[0].recalled),
            (Kind::Message, 0, 0)
        );
        let inbox = store.inbox_after("bob", 0, 10).unwrap();
        assert_eq!((inbox[0].gid, inbox[0].kind), (7, Kind::Message));
        assert_eq!(store.unread_direct("bob", "ann", 0).unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join("switchboard.db"), vec![0x5a; 64 * 1024]).unwrap();
        match SqliteStore::open(&dir) {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.contains("not a database"), "{message}")
            }
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok(_) => panic!("opened a corrupt database"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_data_dir_that_cannot_be_created_is_unavailable() {
        let dir = temp_dir("blocked");
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        match SqliteStore::open(&file.join("data")) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.starts_with("cannot create "), "{message}")
            }
            Err(other) => panic!("expected Unavailable, got {other:?}"),
            Ok(_) => panic!("opened a store under a file"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn round_trip_through_a_fresh_database() {
        let dir = temp_dir("fresh");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .commit(&[Write::Room(RoomRecord {
                room: "r".into(),
                seq: 1,
                from: "ann".into(),
                ts: 5,
                body: "{}".into(),
                ..RoomRecord::default()
            })])
            .unwrap();
        assert_eq!(store.room_after("r", 0, 10).unwrap().len(), 1);
        store.check().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
