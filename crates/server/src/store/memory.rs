//! An in-memory store (`--store memory`): same semantics as SQLite, nothing
//! survives a restart. For tests, benchmarks and throwaway servers.

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::Mutex;

use crate::expiring::ExpiringMap;

use super::{
    Counter, DedupeRecord, DirectRecord, Kind, Original, Recovered, Result, RoomRecord, Store,
    StoreError, Write, MAX_DEVICE_CURSORS, MAX_UNREAD,
};

#[derive(Default)]
struct State {
    rooms: HashMap<String, (u64, BTreeMap<u64, RoomRecord>)>,
    inboxes: HashMap<String, (u64, BTreeMap<u64, DirectRecord>)>,
    /// user → device → confirmed inbox seq.
    cursors: HashMap<String, HashMap<String, u64>>,
    /// user → conversation key → read position.
    reads: HashMap<String, HashMap<String, u64>>,
    /// Seq floors by bucket (see [`Write::RoomFloor`]).
    room_floors: HashMap<u32, u64>,
    inbox_floors: HashMap<u32, u64>,
    /// Keyed by (user, target, id), as in SQLite.
    dedupe: ExpiringMap<(String, String, String), DedupeRecord>,
    /// Highest gid ever committed: retention may drop the message, never
    /// the number (gids must not be reused).
    last_gid: u64,
}

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

/// A stored seq names one message for good: like SQLite's primary keys,
/// a write that reuses one (stored, or earlier in the batch) fails the batch.
fn reject_reused_seqs(st: &State, batch: &[Write]) -> Result<()> {
    let mut rooms: HashSet<(&str, u64)> = HashSet::new();
    let mut inboxes: HashSet<(&str, u64)> = HashSet::new();
    for write in batch {
        let reused = match write {
            Write::Room(m) => {
                !rooms.insert((&m.room, m.seq))
                    || st
                        .rooms
                        .get(&m.room)
                        .is_some_and(|r| r.1.contains_key(&m.seq))
            }
            Write::Direct(d) => {
                !inboxes.insert((&d.to, d.seq))
                    || st
                        .inboxes
                        .get(&d.to)
                        .is_some_and(|i| i.1.contains_key(&d.seq))
            }
            _ => false,
        };
        if reused {
            return Err(StoreError::Internal(
                "commit rejected: a seq is already stored".into(),
            ));
        }
    }
    Ok(())
}

impl Store for MemoryStore {
    fn recover(&self, dedupe_since: u64) -> Result<Recovered> {
        let st = self.state.lock();
        fn counters<R>(
            map: &HashMap<String, (u64, BTreeMap<u64, R>)>,
            ts: impl Fn(&R) -> u64,
        ) -> Vec<Counter> {
            map.iter()
                .map(|(name, (seq, held))| Counter {
                    name: name.clone(),
                    seq: *seq,
                    last_ts: held.values().next_back().map(&ts).unwrap_or(0),
                })
                .collect()
        }
        let floors = |f: &HashMap<u32, u64>| f.iter().map(|(b, v)| (*b, *v)).collect();
        Ok(Recovered {
            rooms: counters(&st.rooms, |m| m.ts),
            inboxes: counters(&st.inboxes, |d| d.ts),
            room_floors: floors(&st.room_floors),
            inbox_floors: floors(&st.inbox_floors),
            last_gid: st.last_gid,
            dedupe: st
                .dedupe
                .values()
                .filter(|(_, ts)| *ts >= dedupe_since)
                .map(|(d, _)| d.clone())
                .collect(),
        })
    }

    fn commit(&self, batch: &[Write]) -> Result<()> {
        let mut st = self.state.lock();
        // Validate before applying anything, so a rejected batch leaves no
        // trace (SQLite gets that from its transaction).
        reject_reused_seqs(&st, batch)?;
        for write in batch {
            match write {
                Write::Room(m) => {
                    let room = st.rooms.entry(m.room.clone()).or_default();
                    room.0 = room.0.max(m.seq);
                    room.1.insert(m.seq, m.clone());
                }
                Write::Direct(d) => {
                    let inbox = st.inboxes.entry(d.to.clone()).or_default();
                    inbox.0 = inbox.0.max(d.seq);
                    inbox.1.insert(d.seq, d.clone());
                    st.last_gid = st.last_gid.max(d.gid);
                }
                Write::Dedupe(d) => {
                    let key = (d.user.clone(), d.target.clone(), d.id.clone());
                    st.dedupe.insert(key, d.clone(), d.ts);
                }
                Write::Cursor { user, device, upto } => {
                    let devices = st.cursors.entry(user.clone()).or_default();
                    let c = devices.entry(device.clone()).or_default();
                    *c = (*c).max(*upto);
                    if devices.len() > MAX_DEVICE_CURSORS {
                        // The one furthest behind goes, as in SQLite (ties:
                        // the greatest name).
                        let behind = devices
                            .iter()
                            .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                            .map(|(d, _)| d.clone());
                        if let Some(device) = behind {
                            devices.remove(&device);
                        }
                    }
                }
                Write::Amend { original, body, ts } => {
                    let (body, edited, recalled) = match body {
                        Some(body) => (body.clone(), *ts, 0),
                        None => ("null".to_string(), 0, *ts),
                    };
                    let recall = recalled != 0;
                    let apply = |b: &mut String, e: &mut u64, r: &mut u64| {
                        *b = body.clone();
                        *e = (*e).max(edited);
                        *r = recalled;
                    };
                    match original {
                        Original::Room { room, seq } => {
                            if let Some(r) = st.rooms.get_mut(room) {
                                for m in r.1.values_mut() {
                                    if m.seq == *seq {
                                        apply(&mut m.body, &mut m.edited, &mut m.recalled);
                                    } else if recall && m.kind == Kind::Edit && m.target == *seq {
                                        m.body = "null".into();
                                    }
                                }
                            }
                        }
                        Original::Direct { to, gid } => {
                            if let Some(i) = st.inboxes.get_mut(to) {
                                for d in i.1.values_mut() {
                                    if d.gid == *gid {
                                        apply(&mut d.body, &mut d.edited, &mut d.recalled);
                                    } else if recall && d.kind == Kind::Edit && d.target == *gid {
                                        d.body = "null".into();
                                    }
                                }
                            }
                        }
                    }
                }
                Write::ReadPosition { user, key, upto } => {
                    let upto_now = st
                        .reads
                        .entry(user.clone())
                        .or_default()
                        .entry(key.clone())
                        .or_default();
                    *upto_now = (*upto_now).max(*upto);
                }
                Write::ForgetRoom { room } => {
                    st.rooms.remove(room);
                    let key = format!("room:{room}");
                    for positions in st.reads.values_mut() {
                        positions.remove(&key);
                    }
                    st.reads.retain(|_, positions| !positions.is_empty());
                }
                Write::ForgetInbox { user } => {
                    st.inboxes.remove(user);
                    st.cursors.remove(user);
                    if let Some(positions) = st.reads.get_mut(user) {
                        positions.retain(|key, _| !key.starts_with("user:"));
                        if positions.is_empty() {
                            st.reads.remove(user);
                        }
                    }
                }
                Write::RoomFloor { bucket, value } => {
                    let floor = st.room_floors.entry(*bucket).or_default();
                    *floor = (*floor).max(*value);
                }
                Write::InboxFloor { bucket, value } => {
                    let floor = st.inbox_floors.entry(*bucket).or_default();
                    *floor = (*floor).max(*value);
                }
                // split_off: O(log n + dropped), not a scan of what is kept.
                Write::TrimRoom { room, upto } => {
                    if let Some(r) = st.rooms.get_mut(room) {
                        r.1 = r.1.split_off(&(upto + 1));
                    }
                }
                Write::TrimInbox { user, upto } => {
                    if let Some(i) = st.inboxes.get_mut(user) {
                        i.1 = i.1.split_off(&(upto + 1));
                    }
                }
            }
        }
        Ok(())
    }

    fn room_after(&self, room: &str, after: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        let st = self.state.lock();
        Ok(st
            .rooms
            .get(room)
            .map(|r| {
                r.1.range(after + 1..)
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn room_before(&self, room: &str, before: u64, limit: usize) -> Result<Vec<RoomRecord>> {
        let st = self.state.lock();
        let mut out: Vec<RoomRecord> = st
            .rooms
            .get(room)
            .map(|r| {
                r.1.range(..before)
                    .rev()
                    .filter(|(_, m)| m.kind == Kind::Message)
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default();
        out.reverse();
        Ok(out)
    }

    fn room_oldest(&self, room: &str) -> Result<Option<u64>> {
        Ok(self
            .state
            .lock()
            .rooms
            .get(room)
            .and_then(|r| r.1.keys().next().copied()))
    }

    fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<DirectRecord>> {
        let st = self.state.lock();
        Ok(st
            .inboxes
            .get(user)
            .map(|r| {
                r.1.range(after + 1..)
                    .take(limit)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn inbox_oldest(&self, user: &str) -> Result<Option<u64>> {
        Ok(self
            .state
            .lock()
            .inboxes
            .get(user)
            .and_then(|r| r.1.keys().next().copied()))
    }

    fn conversation(
        &self,
        a: &str,
        b: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<DirectRecord>> {
        let st = self.state.lock();
        let mut all: Vec<DirectRecord> = [(a, b), (b, a)]
            .iter()
            .filter_map(|(to, from)| st.inboxes.get(*to).map(|i| (i, *from)))
            .flat_map(|(i, from)| {
                i.1.values()
                    .filter(move |d| d.from == from && d.gid < before && d.kind == Kind::Message)
                    .cloned()
            })
            .collect();
        all.sort_by_key(|d| d.gid);
        let skip = all.len().saturating_sub(limit);
        Ok(all.split_off(skip))
    }

    fn cursor(&self, user: &str, device: &str) -> Result<u64> {
        Ok(self
            .state
            .lock()
            .cursors
            .get(user)
            .and_then(|devices| devices.get(device))
            .copied()
            .unwrap_or(0))
    }

    fn room_entry(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>> {
        let st = self.state.lock();
        Ok(st.rooms.get(room).and_then(|r| r.1.get(&seq)).cloned())
    }

    fn direct_entry(&self, gid: u64) -> Result<Option<DirectRecord>> {
        // A scan: edits and recalls are rare, and an index by gid would
        // have to follow every trim.
        let st = self.state.lock();
        Ok(st
            .inboxes
            .values()
            .flat_map(|i| i.1.values())
            .find(|d| d.gid == gid)
            .cloned())
    }

    fn read_position(&self, user: &str, key: &str) -> Result<u64> {
        let st = self.state.lock();
        Ok(st
            .reads
            .get(user)
            .and_then(|positions| positions.get(key))
            .copied()
            .unwrap_or(0))
    }

    fn read_positions(&self, user: &str) -> Result<Vec<(String, u64)>> {
        let st = self.state.lock();
        Ok(st
            .reads
            .get(user)
            .map(|positions| positions.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default())
    }

    fn peers(&self, user: &str, limit: usize) -> Result<Vec<(String, u64, u64)>> {
        let st = self.state.lock();
        let mut newest: HashMap<&str, &DirectRecord> = HashMap::new();
        for (owner, (_, held)) in &st.inboxes {
            for d in held.values().filter(|d| d.kind == Kind::Message) {
                let peer = if owner == user {
                    d.from.as_str()
                } else if d.from == user {
                    owner.as_str()
                } else {
                    continue;
                };
                let slot = newest.entry(peer).or_insert(d);
                if d.gid > slot.gid {
                    *slot = d;
                }
            }
        }
        let mut peers: Vec<(String, u64, u64)> = newest
            .into_iter()
            .map(|(peer, d)| (peer.to_string(), d.gid, d.ts))
            .collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.1));
        peers.truncate(limit);
        Ok(peers)
    }

    fn room_last(&self, room: &str) -> Result<Option<(u64, u64)>> {
        let st = self.state.lock();
        Ok(st.rooms.get(room).and_then(|r| {
            r.1.values()
                .rev()
                .find(|m| m.kind == Kind::Message)
                .map(|m| (m.seq, m.ts))
        }))
    }

    fn last_from(&self, user: &str, peer: &str) -> Result<Option<u64>> {
        let st = self.state.lock();
        Ok(st.inboxes.get(user).and_then(|i| {
            i.1.values()
                .rev()
                .find(|d| d.from == peer && d.kind == Kind::Message)
                .map(|d| d.seq)
        }))
    }

    fn unread_direct(&self, user: &str, peer: &str, after: u64) -> Result<u64> {
        let st = self.state.lock();
        Ok(st.inboxes.get(user).map_or(0, |i| {
            i.1.range(after + 1..)
                .filter(|(_, d)| d.from == peer && d.kind == Kind::Message && d.recalled == 0)
                .take(MAX_UNREAD as usize)
                .count() as u64
        }))
    }

    fn unread_room(&self, room: &str, user: &str, after: u64) -> Result<u64> {
        let st = self.state.lock();
        Ok(st.rooms.get(room).map_or(0, |r| {
            r.1.range(after + 1..)
                .filter(|(_, m)| m.from != user && m.kind == Kind::Message && m.recalled == 0)
                .take(MAX_UNREAD as usize)
                .count() as u64
        }))
    }

    fn trim(&self, older_than: u64, dedupe_before: u64) -> Result<()> {
        // Seqs are committed in time order, so the oldest messages are the
        // first ones: pop them, rather than scan what is kept.
        let mut st = self.state.lock();
        for (_, msgs) in st.rooms.values_mut() {
            while let Some(first) = msgs.first_entry() {
                if first.get().ts >= older_than {
                    break;
                }
                first.remove();
            }
        }
        for (_, msgs) in st.inboxes.values_mut() {
            while let Some(first) = msgs.first_entry() {
                if first.get().ts >= older_than {
                    break;
                }
                first.remove();
            }
        }
        st.dedupe.expire(dedupe_before);
        Ok(())
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }
}
