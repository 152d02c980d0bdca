//! Garbage collection: two-phase, so a checkpoint running beside gc never loses a chunk.
//!
//! 1. Mark: every blob reachable from a committed checkpoint (identical subtrees once).
//! 2. Sweep doomed packs (phase two). A pack doomed at time D is deleted only when it is still
//!    unreferenced, D is at least the grace period ago, and no live session started at or before
//!    D. Sessions that started after D saw the pack as doomed and wrote their own copies of
//!    anything they needed; sessions that started before D and have committed are covered by
//!    the mark. A doomed pack that is referenced again is revived.
//! 3. Doom (phase one): live packs with no reachable blob are marked doomed now, after bumping
//!    the gc epoch, so stat caches written before can no longer be trusted blindly.
//! 4. Repack: packs whose live fraction is below the threshold have their live blobs copied
//!    into new packs; the index is re-pointed, and the old pack is doomed like any other.
//! 5. Leftovers: pack objects the catalog does not know (a writer died between upload and
//!    index) and interrupted uploads are deleted when no other session is alive.

use super::blobs::{BlobSource, PACK_TARGET};
use super::usage::walk_reachable_files;
use super::{EngineError, Progress, Repo, Result, now_ns};
use crate::catalog::{BlobLoc, PackRow};
use crate::model::BlobId;
use crate::store::{BlobKind, PackWriter};
use rustix::fs::{FlockOperation, flock};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Inputs of `gc`.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// How long an unreferenced pack stays doomed before it may be deleted.
    pub grace: Duration,
    /// Repack packs whose live fraction is below this (0.0–1.0).
    pub repack_below: f64,
    /// The most the lower images may take on disk, in bytes: beyond it, images of trees that
    /// are no machine's base go, least recently used first (`engine/image.rs`).
    pub images_max: u64,
    pub dry_run: bool,
}

/// The default of [`GcOptions::images_max`]: about twenty images of a Debian root file system.
pub const DEFAULT_IMAGES_MAX: u64 = 2 << 30;

/// What `gc` did (or would do, with `dry_run`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub packs_total: u64,
    /// Packs found unreferenced and marked; deleted by a later gc after the grace period.
    pub packs_doomed: u64,
    pub packs_deleted: u64,
    /// Doomed packs found referenced again (a checkpoint ran beside gc) and kept.
    pub packs_revived: u64,
    pub packs_repacked: u64,
    pub orphans_deleted: u64,
    /// Copies removed from the data layer (`mount/data.rs`): no checkpoint holds their file.
    pub copies_deleted: u64,
    /// Lower images removed: of trees nothing reachable holds any more.
    pub images_deleted: u64,
    /// Lower images removed to keep them within `images_max` (their trees stay reachable).
    pub images_evicted: u64,
    pub bytes_freed: u64,
    /// Bytes in doomed packs, freed by a gc after the grace period.
    pub bytes_pending: u64,
    pub dry_run: bool,
}

impl Repo {
    pub fn gc(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        let result = self.gc_inner(opts, progress);
        let detail = result
            .as_ref()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .map_err(super::machine::clone_err);
        self.audit("gc", None, None, &detail);
        if result.is_ok() && !opts.dry_run {
            // Maintenance is the moment to fold the catalog's WAL into its main file, so that
            // file alone is current after each gc. Readers in the way only make it partial.
            if let Err(e) = self.catalog.fold_wal() {
                tracing::warn!("could not fold the catalog's WAL into it: {e}");
            }
        }
        result
    }

    fn gc_inner(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        let lock_path = self.home.join("locks").join("gc.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| EngineError::Io {
                op: "open",
                path: lock_path.clone(),
                source,
            })?;
        if flock(&lock_file, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(EngineError::Invalid(
                "another gc is running; wait for it to finish".to_owned(),
            ));
        }
        let session = self.begin_session("gc")?;
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let now = now_ns();

        // Live sessions other than ours; dead ones are forgotten.
        let mut oldest_live: Option<i64> = None;
        for s in self.catalog.sessions()? {
            if s.started_at == session.started_at && s.pid == std::process::id() {
                continue;
            }
            if self.session_alive(s.pid, s.started_at) {
                oldest_live = Some(oldest_live.map_or(s.started_at, |o: i64| o.min(s.started_at)));
            } else if !opts.dry_run {
                self.catalog.end_session(s.id)?;
                self.remove_session_lock(s.pid, s.started_at);
            }
        }

        // 1. Mark.
        progress.phase("marking", None);
        let src = BlobSource::new(&self.store, &self.catalog_path())?;
        let marked_at = std::time::SystemTime::now() - Duration::from_secs(1);
        let mut reachable: HashSet<BlobId> = HashSet::new();
        // The data layer's copies that some reachable tree still holds.
        let mut copies: HashSet<String> = HashSet::new();
        let mut on_file = |n: &crate::model::Node| {
            if let Some(extents) = crate::mount::data_eligible(n) {
                copies.insert(crate::mount::data_key(extents));
            }
        };
        let mut seen = HashSet::new();
        // Every reachable root tree, whose lower image (if any) stays.
        let mut roots: HashSet<String> = HashSet::new();
        for c in self.catalog.all_checkpoints()? {
            roots.insert(c.root.to_hex());
            walk_reachable_files(
                &src,
                c.root,
                &mut seen,
                &mut |id| {
                    reachable.insert(id);
                },
                &mut on_file,
            )?;
            progress.advance(1);
        }
        // A mounted machine's base is served by its lower layer even if no checkpoint names it.
        let mut bases: HashSet<String> = HashSet::new();
        for m in self.catalog.machines()? {
            if let Some(b) = m.base {
                roots.insert(b.root.to_hex());
                bases.insert(b.root.to_hex());
                walk_reachable_files(
                    &src,
                    b.root,
                    &mut seen,
                    &mut |id| {
                        reachable.insert(id);
                    },
                    &mut on_file,
                )?;
            }
        }
        let mut per_pack: HashMap<_, (u64, u64, Vec<BlobLoc>)> = HashMap::new();
        self.catalog.for_each_blob(&mut |loc| {
            let e = per_pack.entry(loc.pack).or_insert((0, 0, Vec::new()));
            if reachable.contains(&loc.id) {
                e.0 += u64::from(loc.stored_len);
                e.2.push(*loc);
            } else {
                e.1 += u64::from(loc.stored_len);
            }
        })?;
        let packs = self.catalog.packs()?;
        report.packs_total = packs.len() as u64;
        let grace_ns = i64::try_from(opts.grace.as_nanos()).unwrap_or(i64::MAX);

        // 2. Sweep doomed packs; 3. doom unreferenced ones.
        progress.phase("sweeping", Some(packs.len() as u64));
        let mut epoch_bumped = false;
        let mut repack: Vec<(PackRow, Vec<BlobLoc>)> = Vec::new();
        for p in &packs {
            progress.advance(1);
            let (live, dead, live_blobs) = per_pack.remove(&p.id).unwrap_or_default();
            match p.doomed_at {
                Some(_) if live > 0 => {
                    report.packs_revived += 1;
                    if !opts.dry_run {
                        self.catalog.undoom_pack(&p.id)?;
                    }
                }
                Some(d) => {
                    let old_enough = now.saturating_sub(d) >= grace_ns;
                    let no_older_session = oldest_live.is_none_or(|s| s > d);
                    if old_enough && no_older_session {
                        report.packs_deleted += 1;
                        report.bytes_freed += p.size;
                        if !opts.dry_run {
                            // Catalog first: once the rows are gone no reader can find the pack;
                            // an object left by a crash here is an orphan swept below next time.
                            self.catalog.delete_pack(&p.id)?;
                            self.store.delete_pack(&p.id)?;
                        }
                    } else {
                        report.bytes_pending += p.size;
                    }
                }
                None if live == 0 => {
                    report.packs_doomed += 1;
                    report.bytes_pending += p.size;
                    if !opts.dry_run {
                        if !epoch_bumped {
                            self.catalog.bump_gc_epoch()?;
                            epoch_bumped = true;
                        }
                        self.catalog.doom_pack(&p.id, now_ns())?;
                    }
                }
                None => {
                    let total = live + dead;
                    if dead > 0 && total > 0 && (live as f64) < opts.repack_below * total as f64 {
                        repack.push((
                            PackRow {
                                id: p.id,
                                size: p.size,
                                created_at: p.created_at,
                                doomed_at: None,
                            },
                            live_blobs,
                        ));
                    }
                }
            }
        }

        // 4. Repack.
        if !repack.is_empty() && !opts.dry_run {
            progress.phase("repacking", Some(repack.len() as u64));
            self.repack(&src, &repack, &mut report)?;
        } else {
            report.packs_repacked = repack.len() as u64;
        }

        // 5. Copies in the data layer of files no reachable tree holds. A view only fills and
        // names copies of its own base, which stays reachable while it is served.
        if !opts.dry_run {
            let (files, bytes) = self
                .data_layer()
                .sweep(&copies, marked_at)
                .map_err(|source| EngineError::Io {
                    op: "sweep the data layer",
                    path: self.data_layer().dir().to_owned(),
                    source,
                })?;
            report.copies_deleted = files;
            report.bytes_freed += bytes;
        }

        // 5b. Lower images of trees no checkpoint or machine base holds any more.
        if !opts.dry_run {
            report.images_deleted =
                self.sweep_images(&roots, marked_at)
                    .map_err(|source| EngineError::Io {
                        op: "sweep the lower images",
                        path: self.images_dir(),
                        source,
                    })?;
        }
        // 5c. The rest of them within their budget.
        let evicted = self.evict_images(&bases, opts.images_max, opts.dry_run)?;
        report.images_evicted = evicted.images;
        report.bytes_freed += evicted.bytes;

        // 6. Leftovers, only when nobody else is writing.
        if oldest_live.is_none() && !opts.dry_run {
            let known: HashSet<_> = self.catalog.packs()?.into_iter().map(|p| p.id).collect();
            for (id, size) in self.store.list_packs()? {
                if !known.contains(&id) {
                    self.store.delete_pack(&id)?;
                    report.orphans_deleted += 1;
                    report.bytes_freed += size;
                }
            }
            self.store.backend().sweep_incomplete(opts.grace)?;
        }
        drop(session);
        Ok(report)
    }

    fn repack(
        &self,
        src: &BlobSource<'_>,
        packs: &[(PackRow, Vec<BlobLoc>)],
        report: &mut GcReport,
    ) -> Result<()> {
        let mut writer = PackWriter::new();
        let mut moved: Vec<BlobLoc> = Vec::new();
        let mut done: Vec<crate::model::PackId> = Vec::new();
        let flush = |w: PackWriter,
                     moved: &mut Vec<BlobLoc>,
                     done: &mut Vec<crate::model::PackId>|
         -> Result<()> {
            if w.is_empty() {
                return Ok(());
            }
            let fin = w.finish();
            self.store.put_pack(&fin)?;
            let (row, locs) = super::blobs::index_rows(&fin);
            self.catalog.relocate_blobs(&row, &locs)?;
            // The old packs now hold no indexed blob; doom them for deletion after the grace.
            for old in done.drain(..) {
                self.catalog.doom_pack(&old, now_ns())?;
            }
            moved.clear();
            Ok(())
        };
        for (pack, blobs) in packs {
            for loc in blobs {
                let raw = src.read(loc.id)?;
                let kind = if loc.kind == BlobKind::Tree as u8 {
                    BlobKind::Tree
                } else {
                    BlobKind::Chunk
                };
                writer.add(loc.id, kind, &raw)?;
                moved.push(*loc);
            }
            done.push(pack.id);
            report.packs_repacked += 1;
            if writer.stored_bytes() >= PACK_TARGET {
                flush(
                    std::mem::replace(&mut writer, PackWriter::new()),
                    &mut moved,
                    &mut done,
                )?;
            }
        }
        flush(writer, &mut moved, &mut done)
    }
}
