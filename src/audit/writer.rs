//! Stage: audit — the writer thread: group commit of appends into segment files, one `fdatasync` per
//! batch, the batch added to the index, then the answers; signed checkpoints. It is the only thread a
//! request's audit step wakes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ring::signature::Ed25519KeyPair;
use tokio::sync::{mpsc, oneshot};

use super::format::{format_time, segment_name, sync_dir, truncate_ms, Checkpoint, CHECKPOINTS_FILE};
use super::index::{Index, IndexItem, Location};
use super::{AuditEntry, AuditError, AuditOptions, AuditRecord};

/// Most records committed by one `fdatasync`.
pub(crate) const MAX_BATCH: usize = 4096;

/// Largest batch buffer kept for the next batch (bytes).
const KEPT_BATCH_BUF: usize = 1 << 20;

/// How often the commit delay looks for newly arrived appends.
const COMMIT_DELAY_POLL: Duration = Duration::from_micros(50);

/// Zeros written ahead of the open segment's end (see [`OpenSegment::write_batch`]).
const PREALLOCATE: u64 = 1 << 20;

// Nearly every command is an append, so boxing the record would only add an allocation per entry.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Cmd {
    Append(AuditRecord, oneshot::Sender<Result<AuditEntry, AuditError>>),
    Checkpoint(oneshot::Sender<Result<(), AuditError>>),
}

/// State read by the handles while the writer owns the files.
pub(crate) struct Shared {
    pub(crate) head: Mutex<(u64, String)>,
    pub(crate) fail_writes: AtomicBool,
    pub(crate) fsyncs: AtomicU64,
}

/// The segment being appended to.
pub(crate) struct OpenSegment {
    /// The seq its name carries.
    pub(crate) first: u64,
    pub(crate) file: File,
    /// Length of what is known to be whole and synced; anything beyond is zeros written ahead, or a
    /// failed write to cut.
    pub(crate) len: u64,
    /// The file's size: `len` plus the zeros written ahead.
    pub(crate) allocated: u64,
    pub(crate) entries: u64,
}

impl OpenSegment {
    /// Write a batch at the end of what is synced, into zeros written there ahead of time, so that the
    /// batch's `fdatasync` carries the data alone: the file's size does not change, so the inode need
    /// not be written too (a quarter less time per sync on the disk measured, `BENCHMARKS.md`).
    /// Once per [`PREALLOCATE`] bytes the batch also writes the next zeros, and that sync carries them.
    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            self.file.write_all_at(&vec![0; PREALLOCATE as usize], end)?;
            self.allocated = end + PREALLOCATE;
        }
        Ok(())
    }

    /// Cut the file back to its synced length: whatever a failed write left, and the zeros ahead.
    pub(crate) fn cut_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        self.allocated = self.len;
        Ok(())
    }

    /// Once the segment is done (full, or the trail closed) it ends where its last line does. A crash
    /// leaves the zeros ahead; `Segment::read` tells them from a torn line.
    fn cut_zeros_ahead(&mut self) {
        if self.allocated != self.len {
            if let Err(e) = self.cut_back() {
                tracing::warn!(error = %e, segment = self.first, "cannot cut the zeros ahead of an audit segment");
            }
        }
    }
}

pub(crate) struct Writer {
    pub(crate) dir: PathBuf,
    pub(crate) options: AuditOptions,
    pub(crate) segment: Option<OpenSegment>,
    /// A failed write may have left bytes past `segment.len` that could not be cut yet.
    pub(crate) needs_repair: bool,
    pub(crate) seq: u64,
    pub(crate) head_hash: String,
    pub(crate) last_time: DateTime<Utc>,
    pub(crate) key: Arc<Ed25519KeyPair>,
    pub(crate) checkpoints: File,
    pub(crate) checkpoints_len: u64,
    /// A failed checkpoint write could not be cut back yet.
    pub(crate) checkpoints_need_repair: bool,
    pub(crate) last_checkpoint_seq: u64,
    /// The witness outside the data dir that every signed checkpoint is also appended to.
    pub(crate) witness: Option<File>,
    pub(crate) shared: Arc<Shared>,
    /// Given each committed batch before its answers, and each full segment when the next one starts.
    pub(crate) index: Arc<Index>,
    /// The lines of the batch being written (reused from batch to batch).
    pub(crate) batch_buf: Vec<u8>,
}

fn unavailable(e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(e.to_string())
}

fn simulated_disk_full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "simulated: no space left on device")
}

/// Move what is queued into the batch, up to [`MAX_BATCH`] appends.
fn drain(
    rx: &mut mpsc::Receiver<Cmd>,
    appends: &mut Vec<PendingAppend>,
    gather: &mut impl FnMut(Cmd, &mut Vec<PendingAppend>),
) {
    while appends.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(cmd) => gather(cmd, appends),
            Err(_) => break,
        }
    }
}

/// An append waiting for its batch's `fdatasync`, with where to send its entry.
type PendingAppend = (AuditRecord, oneshot::Sender<Result<AuditEntry, AuditError>>);

impl Writer {
    /// Serve until every handle is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        // How many appends the last batch committed: the concurrency the commit delay waits for.
        let mut last_batch = 0;
        while let Some(first) = rx.blocking_recv() {
            let arrived = Instant::now();
            let mut appends = Vec::new();
            let mut checkpoints = Vec::new();
            let mut gather = |cmd: Cmd, appends: &mut Vec<_>| match cmd {
                Cmd::Append(record, reply) => appends.push((record, reply)),
                Cmd::Checkpoint(reply) => checkpoints.push(reply),
            };
            gather(first, &mut appends);
            drain(&mut rx, &mut appends, &mut gather);
            // Commit delay: when the last batch showed concurrent requests and fewer have arrived yet,
            // wait a moment for them, so that one fdatasync answers them all. Only under concurrency
            // (a lone client does not wait, except once right after a burst), and never longer than `commit_delay` after the first arrived.
            let delay = self.options.commit_delay;
            if !delay.is_zero() && last_batch > 1 {
                let deadline = arrived + delay;
                while appends.len() < last_batch {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::sleep((deadline - now).min(COMMIT_DELAY_POLL));
                    drain(&mut rx, &mut appends, &mut gather);
                }
            }
            last_batch = appends.len();
            if !appends.is_empty() {
                let (records, replies): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
                match self.commit(records) {
                    Ok(entries) => {
                        // Indexed before answered, so a search sees every answered request.
                        if let Some((_, location)) = entries.first() {
                            let items = entries
                                .iter()
                                .map(|(entry, location)| IndexItem::new(entry, *location))
                                .collect();
                            self.index.append(location.segment, items);
                        }
                        for ((entry, _), reply) in entries.into_iter().zip(replies) {
                            let _ = reply.send(Ok(entry));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit append failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            let due = self.options.checkpoint_every > 0
                && self.seq.saturating_sub(self.last_checkpoint_seq) >= self.options.checkpoint_every;
            if due || !checkpoints.is_empty() {
                let result = self.checkpoint();
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "audit checkpoint failed");
                }
                for reply in checkpoints {
                    let _ = reply.send(result.clone());
                }
            }
        }
        // Every handle is gone: the trail is closed, and its files end where its last line does.
        if let Some(segment) = &mut self.segment {
            segment.cut_zeros_ahead();
        }
    }

    /// Write one batch and sync it. On any failure nothing of the batch remains and the head is unchanged.
    fn commit(&mut self, records: Vec<AuditRecord>) -> Result<Vec<(AuditEntry, Location)>, AuditError> {
        let now = truncate_ms(self.options.clock.now());
        // The clock may step back; the trail's times never do, so range queries can stop early.
        let time = if now > self.last_time { now } else { self.last_time };
        let time_text = format_time(time);
        let mut seq = self.seq;
        let mut prev = self.head_hash.clone();
        // The last batch's buffer, kept so that a batch does not regrow it from empty.
        let mut buf = std::mem::take(&mut self.batch_buf);
        buf.clear();
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            seq += 1;
            let (entry, line) = AuditEntry::seal(seq, time_text.clone(), record, prev)?;
            // Where the line will lie, relative to the batch until the segment is known.
            let location = Location {
                segment: 0,
                offset: buf.len() as u64,
                len: u32::try_from(line.len()).map_err(unavailable)?,
            };
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            prev = entry.hash.clone();
            out.push((entry, location));
        }
        let count = out.len() as u64;

        let shared = Arc::clone(&self.shared);
        let fail = shared.fail_writes.load(Ordering::SeqCst);
        let segment = self.prepare_segment()?;
        let good_len = segment.len;
        let written = if fail {
            // Write part of the batch first, so the chaos hook exercises the cut-back path.
            segment
                .write_batch(&buf[..buf.len() / 2])
                .and_then(|()| Err(simulated_disk_full()))
        } else {
            segment.write_batch(&buf).and_then(|()| {
                shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                segment.file.sync_data()
            })
        };
        if let Err(e) = written {
            self.needs_repair = segment.cut_back().is_err();
            return Err(unavailable(e));
        }
        for (_, location) in &mut out {
            location.segment = segment.first;
            location.offset += good_len;
        }
        segment.len += buf.len() as u64;
        segment.entries += count;
        // Kept unless a burst made it large: the writer's memory stays bounded between bursts.
        if buf.capacity() <= KEPT_BATCH_BUF {
            self.batch_buf = buf;
        }
        self.seq = seq;
        self.head_hash = prev.clone();
        self.last_time = time;
        let mut head = self.shared.head.lock().unwrap_or_else(|e| e.into_inner());
        *head = (seq, prev);
        Ok(out)
    }

    /// The segment to append to: cut back a failed write, and start a new segment when this one is full.
    fn prepare_segment(&mut self) -> Result<&mut OpenSegment, AuditError> {
        if self.needs_repair {
            if let Some(segment) = &mut self.segment {
                segment.cut_back().map_err(unavailable)?;
            }
            self.needs_repair = false;
        }
        let full = self.segment.as_ref().is_none_or(|s| {
            s.entries > 0
                && (s.len >= self.options.segment_max_bytes || s.entries >= self.options.segment_max_entries)
        });
        if full {
            if let Some(done) = self.segment.as_mut().filter(|s| s.entries > 0) {
                done.cut_zeros_ahead();
                // Once per segment (100,000 entries by default): a few milliseconds of this thread.
                self.index.seal(done.first, done.len);
            }
            let path = self.dir.join(segment_name(self.seq + 1));
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                // Never truncate: an existing file is refused below, not emptied.
                .truncate(false)
                .open(&path)
                .map_err(unavailable)?;
            let len = file.metadata().map_err(unavailable)?.len();
            if len != 0 {
                return Err(AuditError::Corrupt(format!(
                    "{} exists and is not empty",
                    path.display()
                )));
            }
            sync_dir(&self.dir).map_err(unavailable)?;
            self.segment = Some(OpenSegment {
                first: self.seq + 1,
                file,
                len: 0,
                allocated: 0,
                entries: 0,
            });
        }
        self.segment
            .as_mut()
            .ok_or_else(|| unavailable("no open segment"))
    }

    /// Sign the current head and append it to the checkpoints file (synced).
    fn checkpoint(&mut self) -> Result<(), AuditError> {
        if self.seq == 0 || self.seq == self.last_checkpoint_seq {
            return Ok(());
        }
        if self.shared.fail_writes.load(Ordering::SeqCst) {
            return Err(unavailable(simulated_disk_full()));
        }
        if self.checkpoints_need_repair {
            self.checkpoints
                .set_len(self.checkpoints_len)
                .map_err(unavailable)?;
            self.checkpoints_need_repair = false;
        }
        let checkpoint = Checkpoint::sign(
            &self.key,
            self.seq,
            self.head_hash.clone(),
            format_time(Utc::now()),
        );
        let mut line = serde_json::to_vec(&checkpoint).map_err(unavailable)?;
        line.push(b'\n');
        let written = self
            .checkpoints
            .write_all(&line)
            .and_then(|()| self.checkpoints.sync_data());
        if let Err(e) = written {
            if self.checkpoints.set_len(self.checkpoints_len).is_err() {
                tracing::error!(
                    file = CHECKPOINTS_FILE,
                    "cannot cut back a failed checkpoint write yet"
                );
                self.checkpoints_need_repair = true;
            }
            return Err(unavailable(e));
        }
        self.checkpoints_len += line.len() as u64;
        self.last_checkpoint_seq = self.seq;
        // The witness copy: the trail's folder is not trusted to keep its own checkpoints. A failed
        // witness write fails the checkpoint (logged), not the requests; the next one tries again.
        if let Some(witness) = &mut self.witness {
            witness
                .write_all(&line)
                .and_then(|()| witness.sync_data())
                .map_err(|e| unavailable(format!("audit witness: {e}")))?;
        }
        Ok(())
    }
}
