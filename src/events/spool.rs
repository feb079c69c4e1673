//! The spool: a write-ahead log of usage events on local disk, so that neither a dead
//! collector nor a killed sidecar loses an event of a request that was answered.
//!
//! Layout: `DIR/seg-<id>.log` segment files, appended by one writer at a time and read
//! oldest first by the shipper; `DIR/cursor` (segment and offset acknowledged so far);
//! `DIR/lock` (flock: one process per spool). A record is `len: u32 LE |
//! checksum(payload): u32 LE | payload` (one event's JSON). The checksum is CRC-32C (the
//! SSE4.2 instruction), marked by the length's top bit; records without the mark, from
//! versions before it, carry the IEEE CRC-32 and still read. A segment is deleted only once every record in it was
//! acknowledged by the collector. After a crash, a record whose checksum fails or whose
//! length runs past the end of its segment (a torn tail) is counted and skipped.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

const HEADER: usize = 8;
/// Set in a record's length: its checksum is CRC-32C, not the IEEE CRC-32 of old records.
/// Far above `MAX_RECORD`, so no length of either kind can be taken for the other.
const CASTAGNOLI: u32 = 1 << 31;
/// How much of a segment one read takes (more when a single record is larger).
const READ_CHUNK: usize = 1 << 20;
/// Larger than any event by far: a length above it is corruption, not a record.
pub const MAX_RECORD: usize = 1 << 20;
/// A segment is sealed and a new one started once it holds this much.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Records read for one delivery, as NDJSON, and where the next read starts.
#[derive(Debug, Default)]
pub struct Batch {
    pub ndjson: Vec<u8>,
    pub events: usize,
    pub end: Position,
    /// The bytes read from disk, kept for the next read.
    buf: Vec<u8>,
}

/// What recovery and reading found wrong in the spool, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Records whose checksum failed, skipped.
    pub corrupt_records: u64,
    /// Segment tails that were cut mid-record (a crash while writing), skipped.
    pub torn_tails: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes written: whole records only, for the active segment as well.
    len: u64,
}

#[derive(Debug)]
struct Index {
    /// Oldest first; the last one is the active (written) segment.
    segments: Vec<Segment>,
    /// The next record to send.
    cursor: Position,
    total_bytes: u64,
    /// Records written and not yet acknowledged.
    pending: u64,
}

/// Shared by the writer thread and the shipper.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    active: Mutex<Active>,
    /// Held for a whole `sync`.
    syncing: Mutex<()>,
    /// The first segment this process wrote. Its records and later ones are read back from
    /// the page cache they were written to, and nothing but a crash tears or garbles a
    /// record: a crash ends this process, and the next one verifies them. So only older
    /// segments, recovered from disk, have their checksums verified when read (which
    /// saves a CRC of every event on the shipper's side).
    own_from: u64,
    _lock: File,
}

struct Active {
    /// Shared so that a sync runs without the lock: appends go on while the disk works.
    file: Arc<File>,
    id: u64,
    dirty: bool,
}

/// The outcome of an append.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub written: u64,
    /// Events that did not fit under `spool_max_bytes`: dropped, and counted by the caller.
    pub dropped: u64,
    /// Payloads refused for their size (empty, or over `MAX_RECORD`): dropped too.
    pub rejected: u64,
    /// The active segment has reached `SEGMENT_BYTES`: `Appender::rotate` is due.
    pub segment_full: bool,
}

/// A segment `Appender::rotate` sealed, still to be synced.
#[must_use = "a sealed segment is to be synced"]
pub struct Sealed {
    file: Arc<File>,
    path: PathBuf,
}

impl Sealed {
    pub fn sync(self) -> Result<(), String> {
        sync(&self.file, &self.path)
    }
}

/// The right to append to the active segment, held by one writer at a time.
pub struct Appender<'a> {
    spool: &'a Spool,
    active: MutexGuard<'a, Active>,
}

/// Records framed for one `append_framed`, each payload written in place behind room for
/// its header, which is filled in after: no copy of the payload, and the buffer is reused.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
    /// Where each record ends in `buf`.
    ends: Vec<usize>,
    /// Payloads refused for their size (empty, or over `MAX_RECORD`).
    rejected: u64,
}

impl Frames {
    /// Adds one record whose payload `write` appends to the buffer it is given.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER]);
        write(&mut self.buf);
        let len = self.buf.len() - start - HEADER;
        if len == 0 || len > MAX_RECORD {
            self.buf.truncate(start);
            self.rejected += 1;
            return;
        }
        let crc = crc32c::crc32c(&self.buf[start + HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&(len as u32 | CASTAGNOLI).to_le_bytes());
        self.buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        self.ends.push(self.buf.len());
    }

    /// Records pushed (refused ones not included).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Payloads refused for their size.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.rejected == 0
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.rejected = 0;
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("spool: cannot {what} {}: {e}", path.display())
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering what a previous process left.
    /// Returns the spool and what recovery found damaged.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Arc<Spool>, Damage), String> {
        fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io("open", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "spool: {} is in use by another process (one spool per sidecar)",
                dir.display()
            ));
        }
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let entry = entry.map_err(|e| io("list", dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("seg-"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push(id);
        }
        ids.sort_unstable();
        let cursor = read_cursor(dir);
        let mut segments = Vec::new();
        let mut damage = Damage::default();
        let mut pending = 0;
        let mut total_bytes = 0;
        for id in ids {
            let path = segment_path(dir, id);
            if id < cursor.segment {
                // Acknowledged before the crash, not yet deleted.
                let _ = fs::remove_file(&path);
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| io("read", &path, e))?;
            let from = if id == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let scan = scan(&bytes, from as usize);
            damage.corrupt_records += scan.corrupt;
            damage.torn_tails += u64::from(scan.torn);
            pending += scan.records;
            total_bytes += bytes.len() as u64;
            segments.push(Segment {
                id,
                len: bytes.len() as u64,
            });
        }
        let cursor = match segments.first() {
            Some(s) if s.id == cursor.segment => cursor,
            Some(s) => Position {
                segment: s.id,
                offset: 0,
            },
            None => cursor,
        };
        // Always write into a fresh segment: an old tail may be torn.
        let next = segments
            .last()
            .map_or(cursor.segment.max(1), |s| s.id + 1)
            .max(cursor.segment);
        let file = create_segment(dir, next)?;
        segments.push(Segment { id: next, len: 0 });
        let cursor = if segments.len() == 1 {
            Position {
                segment: next,
                offset: 0,
            }
        } else {
            cursor
        };
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index {
                segments,
                cursor,
                total_bytes,
                pending,
            }),
            active: Mutex::new(Active {
                file: Arc::new(file),
                id: next,
                dirty: false,
            }),
            syncing: Mutex::new(()),
            own_from: next,
            _lock: lock,
        };
        Ok((Arc::new(spool), damage))
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends events (each one JSON payload); see `append_framed`.
    pub fn append(&self, payloads: &[Vec<u8>]) -> Result<Appended, String> {
        let mut frames = Frames::default();
        for p in payloads {
            frames.push(|buf| buf.extend_from_slice(p));
        }
        self.append_framed(&frames)
    }

    /// Appends framed records, rotating the segment when it is full; see `Appender`.
    pub fn append_framed(&self, batch: &Frames) -> Result<Appended, String> {
        let mut appender = self.appender();
        let out = appender.append(batch)?;
        if out.segment_full {
            let sealed = appender.rotate()?;
            drop(appender);
            sealed.sync()?;
        }
        Ok(out)
    }

    /// Waits for the active segment.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            spool: self,
            active: self.active.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The active segment if no other writer (or rotation) holds it.
    pub fn try_appender(&self) -> Option<Appender<'_>> {
        let active = match self.active.try_lock() {
            Ok(a) => a,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Appender {
            spool: self,
            active,
        })
    }

    /// Flushes written records to stable storage if any were written since the last sync.
    /// The segment is not held meanwhile: writers go on appending (what they append after
    /// the flag is taken is synced next time). One sync at a time, so that one that finds
    /// nothing dirty returns only after the one in flight is done.
    pub fn sync(&self) -> Result<(), String> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let (file, id) = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if !active.dirty {
                return Ok(());
            }
            active.dirty = false;
            (active.file.clone(), active.id)
        };
        sync(&file, &segment_path(&self.dir, id)).inspect_err(|_| {
            self.active.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
        })
    }

    /// `read_into` a new batch.
    #[cfg(test)]
    pub fn read(&self, max_events: usize) -> Result<(Batch, Damage), String> {
        let mut batch = Batch::default();
        let damage = self.read_into(max_events, &mut batch)?;
        Ok((batch, damage))
    }

    /// Reads up to `max_events` records from the cursor into `batch` (its memory reused:
    /// the shipper keeps one), without moving the cursor. Damaged records are skipped (and
    /// reported); the batch's `end` is where the next read starts. Reads only about what
    /// the batch needs, a bounded chunk at a time.
    pub fn read_into(&self, max_events: usize, batch: &mut Batch) -> Result<Damage, String> {
        let (mut pos, plan, record_bytes): (Position, Vec<(u64, u64)>, usize) = {
            let idx = self.index();
            let plan = idx
                .segments
                .iter()
                .filter(|s| s.id >= idx.cursor.segment)
                .map(|s| (s.id, s.len))
                .collect();
            let average = idx.total_bytes.checked_div(idx.pending).unwrap_or(0);
            (idx.cursor, plan, average as usize)
        };
        batch.ndjson.clear();
        batch.events = 0;
        let mut damage = Damage::default();
        let mut buf = std::mem::take(&mut batch.buf);
        for &(id, len) in &plan {
            if id != pos.segment {
                pos = Position {
                    segment: id,
                    offset: 0,
                };
            }
            let path = segment_path(&self.dir, id);
            let verify = id < self.own_from;
            let mut file = None;
            // A record longer than what was read, read again whole from its start.
            let mut need = 0;
            while batch.events < max_events && pos.offset < len {
                // What the records still wanted take, by the spool's average, and some more.
                let want = (record_bytes + HEADER)
                    .saturating_mul(max_events - batch.events)
                    .saturating_add(64 << 10)
                    .min(READ_CHUNK)
                    .max(need);
                let f = match &file {
                    Some(f) => f,
                    None => file.insert(File::open(&path).map_err(|e| io("open", &path, e))?),
                };
                let n = want.min((len - pos.offset) as usize);
                // The buffer only grows: zeroing what is about to be read over costs as
                // much as the read.
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                let buf = &mut buf[..n];
                f.read_exact_at(buf, pos.offset)
                    .map_err(|e| io("read", &path, e))?;
                // The payloads are about all of the chunk: one allocation for them.
                batch.ndjson.reserve(n);
                let mut at = 0;
                let mut short = None;
                need = 0;
                while batch.events < max_events {
                    match record(buf, at, verify) {
                        Record::Ok { payload, next } => {
                            batch.ndjson.extend_from_slice(payload);
                            batch.ndjson.push(b'\n');
                            batch.events += 1;
                            at = next;
                        }
                        Record::Corrupt { next } => {
                            damage.corrupt_records += 1;
                            at = next;
                        }
                        Record::Short { need } => {
                            short = Some(need);
                            break;
                        }
                        Record::Torn => {
                            // Nothing after a bad length can be trusted: skip the rest.
                            damage.torn_tails += 1;
                            at = (len - pos.offset) as usize;
                            break;
                        }
                        Record::End => break,
                    }
                }
                pos.offset += at as u64;
                if let Some(whole) = short {
                    if pos.offset + whole as u64 > len {
                        // The segment ends inside this record: a tail cut by a crash.
                        damage.torn_tails += 1;
                        pos.offset = len;
                    } else {
                        // The record continues past this chunk: read again from its start.
                        need = whole;
                    }
                }
            }
            if batch.events >= max_events {
                break;
            }
        }
        batch.end = pos;
        batch.buf = buf;
        Ok(damage)
    }

    /// The collector acknowledged everything before `end` (holding `events` records):
    /// segments wholly behind it are deleted and the cursor is saved.
    pub fn ack(&self, end: Position, events: u64) {
        // Lock order as in `append`: the active segment, then the index.
        let mut appender = self.appender();
        let caught_up = {
            let idx = self.index();
            idx.segments
                .last()
                .is_some_and(|s| s.id == end.segment && end.offset >= s.len && s.len > 0)
        };
        if caught_up {
            // Everything written was acknowledged: start a new segment so that the old one
            // can go, and the size cap counts only what still waits for the collector. The
            // sealed one is deleted below, so it is not worth a sync.
            match appender.rotate() {
                Ok(sealed) => drop(sealed),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        drop(appender);
        let doomed: Vec<u64> = {
            let mut idx = self.index();
            idx.cursor = end;
            idx.pending = idx.pending.saturating_sub(events);
            let active = idx.segments.last().map_or(0, |s| s.id);
            let mut doomed = Vec::new();
            let mut freed = 0;
            idx.segments.retain(|s| {
                let behind = s.id < end.segment || (s.id == end.segment && end.offset >= s.len);
                if behind && s.id != active {
                    doomed.push(s.id);
                    freed += s.len;
                    false
                } else {
                    true
                }
            });
            idx.total_bytes -= freed;
            if let Some(first) = idx.segments.first() {
                if first.id > idx.cursor.segment {
                    idx.cursor = Position {
                        segment: first.id,
                        offset: 0,
                    };
                }
            }
            doomed
        };
        let cursor = self.index().cursor;
        // The cursor first: a crash between the two leaves files that recovery deletes.
        if let Err(e) = write_cursor(&self.dir, cursor) {
            tracing::warn!("{e}; acknowledged events may be sent again after a restart");
        }
        for id in doomed {
            let path = segment_path(&self.dir, id);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!("{}", io("delete", &path, e));
            }
        }
    }

    /// Bytes on disk in segments not yet wholly acknowledged.
    pub fn bytes(&self) -> u64 {
        self.index().total_bytes
    }

    /// Records written and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.index().pending
    }
}

impl Appender<'_> {
    /// Appends framed records. The records that do not fit under the size cap (the last
    /// ones: the spool keeps the older events) are dropped and reported. One write per
    /// call, so a reader never sees half a record. Never syncs or rotates (those wait on
    /// the disk): `segment_full` says when `rotate` is due.
    pub fn append(&mut self, batch: &Frames) -> Result<Appended, String> {
        let spool = self.spool;
        let room = {
            let idx = spool.index();
            spool.max_bytes.saturating_sub(idx.total_bytes)
        };
        let fit = batch.ends.partition_point(|&end| end as u64 <= room);
        let bytes = if fit == 0 { 0 } else { batch.ends[fit - 1] };
        let mut out = Appended {
            written: fit as u64,
            dropped: (batch.ends.len() - fit) as u64,
            rejected: batch.rejected,
            segment_full: false,
        };
        if bytes == 0 {
            return Ok(out);
        }
        let buf = &batch.buf[..bytes];
        if let Err(e) = (&*self.active.file).write_all(buf) {
            // A write cut short (a full disk) must not leave part of a record behind: the
            // index would no longer frame what follows. Cut the file back to it.
            let len = spool.index().segments.last().map_or(0, |s| s.len);
            let path = segment_path(&spool.dir, self.active.id);
            if let Err(cut) = self.active.file.set_len(len) {
                tracing::error!("{}", io("truncate", &path, cut));
            }
            return Err(io("write", &path, e));
        }
        self.active.dirty = true;
        let mut idx = spool.index();
        idx.total_bytes += buf.len() as u64;
        idx.pending += out.written;
        if let Some(seg) = idx.segments.last_mut() {
            seg.len += buf.len() as u64;
            out.segment_full = seg.len >= SEGMENT_BYTES;
        }
        Ok(out)
    }

    /// Starts the next segment. The one it seals is synced by the caller once the
    /// segment is let go (`Sealed::sync`), so that no writer waits on that disk flush.
    pub fn rotate(&mut self) -> Result<Sealed, String> {
        let spool = self.spool;
        let active = &mut *self.active;
        let next = active.id + 1;
        let file = Arc::new(create_segment(&spool.dir, next)?);
        let sealed = Sealed {
            file: std::mem::replace(&mut active.file, file),
            path: segment_path(&spool.dir, active.id),
        };
        active.id = next;
        active.dirty = false;
        spool.index().segments.push(Segment { id: next, len: 0 });
        Ok(sealed)
    }

    /// Whether the active segment has reached `SEGMENT_BYTES`.
    pub fn segment_full(&self) -> bool {
        self.spool
            .index()
            .segments
            .last()
            .is_some_and(|s| s.len >= SEGMENT_BYTES)
    }
}

fn create_segment(dir: &Path, id: u64) -> Result<File, String> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io("create", &path, e))?;
    // The new name must survive a crash as well as the data.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(file)
}

fn sync(file: &File, path: &Path) -> Result<(), String> {
    file.sync_data().map_err(|e| io("sync", path, e))
}

fn read_cursor(dir: &Path) -> Position {
    let Ok(text) = fs::read_to_string(dir.join("cursor")) else {
        return Position::default();
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Position { segment, offset },
        _ => Position::default(),
    }
}

fn write_cursor(dir: &Path, p: Position) -> Result<(), String> {
    let tmp = dir.join("cursor.tmp");
    fs::write(&tmp, format!("{} {}\n", p.segment, p.offset)).map_err(|e| io("write", &tmp, e))?;
    fs::rename(&tmp, dir.join("cursor")).map_err(|e| io("rename", &tmp, e))
}

enum Record<'a> {
    Ok {
        payload: &'a [u8],
        next: usize,
    },
    Corrupt {
        next: usize,
    },
    /// The bytes end inside a record that needs `need` bytes from its start.
    Short {
        need: usize,
    },
    /// A length no record can have: what follows cannot be trusted.
    Torn,
    End,
}

/// The record at `at`; its checksum compared only if `verify` (see `Spool::own_from`).
fn record(bytes: &[u8], at: usize, verify: bool) -> Record<'_> {
    let rest = &bytes[at.min(bytes.len())..];
    if rest.is_empty() {
        return Record::End;
    }
    if rest.len() < HEADER {
        return Record::Short { need: HEADER };
    }
    let word = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let len = (word & !CASTAGNOLI) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD {
        return Record::Torn;
    }
    if rest.len() < HEADER + len {
        return Record::Short { need: HEADER + len };
    }
    let payload = &rest[HEADER..HEADER + len];
    let next = at + HEADER + len;
    if !verify {
        return Record::Ok { payload, next };
    }
    let sum = if word & CASTAGNOLI != 0 {
        crc32c::crc32c(payload)
    } else {
        crc32fast::hash(payload)
    };
    if sum != crc {
        return Record::Corrupt { next };
    }
    Record::Ok { payload, next }
}

struct Scan {
    records: u64,
    corrupt: u64,
    torn: bool,
}

fn scan(bytes: &[u8], from: usize) -> Scan {
    let mut s = Scan {
        records: 0,
        corrupt: 0,
        torn: false,
    };
    let mut at = from;
    loop {
        match record(bytes, at, true) {
            Record::Ok { next, .. } => {
                s.records += 1;
                at = next;
            }
            Record::Corrupt { next } => {
                s.corrupt += 1;
                at = next;
            }
            Record::Torn | Record::Short { .. } => {
                s.torn = true;
                return s;
            }
            Record::End => return s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize, from: usize) -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect()
    }

    fn lines(b: &Batch) -> Vec<String> {
        String::from_utf8(b.ndjson.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn append_read_ack_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, damage) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(damage, Damage::default());
        spool.append(&events(5, 0)).unwrap();
        let (b, _) = spool.read(3).unwrap();
        assert_eq!(lines(&b), ["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
        // Unacknowledged: the same records come again.
        let (again, _) = spool.read(3).unwrap();
        assert_eq!(again.end, b.end);
        spool.ack(b.end, 3);
        let (b, _) = spool.read(10).unwrap();
        assert_eq!(lines(&b), ["{\"n\":3}", "{\"n\":4}"]);
        spool.ack(b.end, 2);
        assert_eq!(spool.pending(), 0);
        let (b, _) = spool.read(10).unwrap();
        assert_eq!(b.events, 0);
    }

    #[test]
    fn survives_reopen_and_resumes_at_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&events(4, 0)).unwrap();
            let (b, _) = spool.read(1).unwrap();
            spool.ack(b.end, 1);
        }
        let (spool, damage) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(damage, Damage::default());
        assert_eq!(spool.pending(), 3);
        spool.append(&events(1, 4)).unwrap();
        let (b, _) = spool.read(10).unwrap();
        assert_eq!(
            lines(&b),
            ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]
        );
    }

    #[test]
    fn a_second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let err = Spool::open(dir.path(), 1 << 30).err().unwrap();
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn torn_and_corrupt_records_are_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&events(3, 0)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        // Flip a payload byte of the second record, and leave half a record at the end.
        let second = HEADER + 7 + HEADER;
        bytes[second] ^= 0xff;
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
        fs::write(&seg, &bytes).unwrap();
        let (spool, damage) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            damage,
            Damage {
                corrupt_records: 1,
                torn_tails: 1
            }
        );
        let (b, read_damage) = spool.read(10).unwrap();
        assert_eq!(lines(&b), ["{\"n\":0}", "{\"n\":2}"]);
        assert_eq!(read_damage.corrupt_records, 1);
        spool.ack(b.end, 2);
        // The damaged segment was behind the cursor: gone.
        assert!(!seg.exists());
    }

    #[test]
    fn checksums_are_verified_on_what_recovery_found_not_on_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment_path(dir.path(), 1);
        let flip_second_payload = || {
            let mut bytes = fs::read(&seg).unwrap();
            bytes[HEADER + 7 + HEADER + 2] ^= 0x20; // n -> N
            fs::write(&seg, &bytes).unwrap();
        };
        {
            let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&events(3, 0)).unwrap();
            // Only a crash garbles what this process wrote; this flip, made by the test, is read
            // as written (and the collector would reject such a line).
            flip_second_payload();
            let (b, damage) = spool.read(10).unwrap();
            assert_eq!(lines(&b), ["{\"n\":0}", "{\"N\":1}", "{\"n\":2}"]);
            assert_eq!(damage, Damage::default());
        }
        // The next process verifies it: the record is counted and skipped.
        let (spool, damage) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(damage.corrupt_records, 1);
        let (b, damage) = spool.read(10).unwrap();
        assert_eq!(lines(&b), ["{\"n\":0}", "{\"n\":2}"]);
        assert_eq!(damage.corrupt_records, 1);
    }

    #[test]
    fn records_from_before_crc32c_still_read() {
        let dir = tempfile::tempdir().unwrap();
        // A segment as versions before CRC-32C wrote it: unmarked length, IEEE CRC-32, and
        // one such record damaged.
        let mut old = Vec::new();
        for (i, payload) in events(3, 0).iter().enumerate() {
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            let crc = crc32fast::hash(payload) ^ u32::from(i == 1);
            old.extend_from_slice(&crc.to_le_bytes());
            old.extend_from_slice(payload);
        }
        fs::write(segment_path(dir.path(), 1), &old).unwrap();
        let (spool, damage) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(damage.corrupt_records, 1);
        spool.append(&events(1, 3)).unwrap();
        let (b, _) = spool.read(10).unwrap();
        assert_eq!(lines(&b), ["{\"n\":0}", "{\"n\":2}", "{\"n\":3}"]);
        // New records carry the mark and a CRC-32C.
        let new = fs::read(segment_path(dir.path(), 2)).unwrap();
        let word = u32::from_le_bytes(new[..4].try_into().unwrap());
        assert_eq!(word, 7 | CASTAGNOLI);
        let crc = u32::from_le_bytes(new[4..8].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(b"{\"n\":3}"));
    }

    #[test]
    fn a_full_spool_drops_exactly_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        // Each record: 8 header + 7 payload bytes = 15. Room for 4.
        let (spool, _) = Spool::open(dir.path(), 60).unwrap();
        let out = spool.append(&events(6, 0)).unwrap();
        assert_eq!(
            out,
            Appended {
                written: 4,
                dropped: 2,
                rejected: 0,
                segment_full: false,
            }
        );
        let out = spool.append(&events(1, 6)).unwrap();
        assert_eq!(out.dropped, 1);
        let (b, _) = spool.read(10).unwrap();
        assert_eq!(b.events, 4);
        spool.ack(b.end, b.events as u64);
        // Acknowledged, the room is free again.
        assert_eq!(spool.bytes(), 0);
        assert_eq!(spool.append(&events(4, 0)).unwrap().written, 4);
    }

    #[test]
    fn records_larger_than_a_read_chunk_and_chunk_edges() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let big = vec![b'y'; MAX_RECORD]; // with its header, more than a chunk
        let mut all = events(3, 0);
        all.push(big.clone());
        // Enough small records that a chunk boundary falls inside one of them.
        all.extend((0..120_000).map(|i| format!("{{\"n\":{i}}}").into_bytes()));
        spool.append(&all).unwrap();
        // One batch reused throughout, as the shipper does: its read buffer grows for the
        // big record and later reads use less of it; no stale byte may leak into a line.
        let mut b = Batch::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        loop {
            let d = spool.read_into(50_000, &mut b).unwrap();
            assert_eq!(d, Damage::default());
            if b.events == 0 {
                break;
            }
            let lines: Vec<Vec<u8>> = b
                .ndjson
                .strip_suffix(b"\n")
                .unwrap()
                .split(|&c| c == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            assert_eq!(lines.len(), b.events);
            got.extend(lines);
            spool.ack(b.end, b.events as u64);
        }
        assert!(got == all, "every record back, in order, byte for byte");
    }

    #[test]
    fn segments_rotate_and_are_deleted_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        let big = vec![b'x'; 600_000];
        for _ in 0..30 {
            spool.append(std::slice::from_ref(&big)).unwrap();
        }
        let count = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_str()
                        .unwrap()
                        .starts_with("seg-")
                })
                .count()
        };
        assert!(count() >= 3);
        loop {
            let (b, _) = spool.read(7).unwrap();
            if b.events == 0 {
                break;
            }
            spool.ack(b.end, b.events as u64);
        }
        assert_eq!(count(), 1, "only the active segment is left");
        assert_eq!(spool.pending(), 0);
    }
}
