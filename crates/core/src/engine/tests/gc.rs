//! gc: two-phase deletion, revival, the session rule and repack, each ending with every live
//! checkpoint still restoring exactly.

use super::fixture::{Snapshot, TestDir, assert_same, noise, snapshot};
use super::*;

fn gc(repo: &Repo, repack_below: f64) -> GcReport {
    repo.gc(
        &GcOptions {
            images_max: crate::engine::DEFAULT_IMAGES_MAX,
            grace: Duration::ZERO,
            repack_below,
            dry_run: false,
        },
        &NoProgress,
    )
    .unwrap()
}

/// Bytes of pack files on disk.
fn pack_bytes(home: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() { walk(&e.path()) } else { m.len() }
            })
            .sum()
        })
    }
    walk(&home.join("store/packs"))
}

fn assert_clean(repo: &Repo) {
    let rep = repo
        .check(&CheckOptions { read_data: true }, &NoProgress)
        .unwrap();
    assert!(rep.ok(), "{:?}", rep.findings);
}

/// Clobbers the machine, restores `reference` and compares with `want`.
fn assert_restores(repo: &Repo, t: &TestDir, reference: &str, want: &Snapshot) {
    t.file(b"clobber", b"junk", 0o644);
    if t.path(b"a").exists() {
        t.file(b"a", b"junk", 0o644);
    }
    restore(repo, reference);
    assert_same(&snapshot(&t.root), want, reference);
}

/// v1 = {a, b}; v2 adds the big file c. Returns the snapshots of both states; the live
/// directory is left in the v2 state.
fn two_versions(env: &Env) -> (TestDir, Snapshot, Snapshot) {
    let t = TestDir::new(&env.path("m"));
    t.file(b"a", &noise(100_000, 1), 0o644)
        .file(b"b", &noise(2_000, 2), 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    let s1 = snapshot(&t.root);
    t.file(b"c", &noise(400_000, 3), 0o644);
    checkpoint(&env.repo, "web");
    let s2 = snapshot(&t.root);
    (t, s1, s2)
}

#[test]
fn deleted_checkpoint_is_doomed_then_deleted_and_the_rest_restores() {
    let env = Env::new();
    let (t, s1, _) = two_versions(&env);
    let before = (
        env.repo.usage().unwrap().store_bytes,
        pack_bytes(&env.home()),
    );
    assert_eq!(before.0, before.1, "catalog and disk agree on pack bytes");

    let idle = gc(&env.repo, 0.0);
    assert_eq!((idle.packs_doomed, idle.packs_deleted), (0, 0), "{idle:?}");
    env.repo.checkpoint_delete(&r("web@v2")).unwrap();

    let dry = env
        .repo
        .gc(
            &GcOptions {
                images_max: crate::engine::DEFAULT_IMAGES_MAX,
                grace: Duration::ZERO,
                repack_below: 0.0,
                dry_run: true,
            },
            &NoProgress,
        )
        .unwrap();
    assert!(dry.packs_doomed > 0, "{dry:?}");
    let first = gc(&env.repo, 0.0);
    assert_eq!(
        first.packs_doomed, dry.packs_doomed,
        "dry run predicted the run"
    );
    assert_eq!(first.packs_deleted, 0, "phase one only dooms: {first:?}");
    assert!(first.bytes_pending > 0);
    assert_eq!(pack_bytes(&env.home()), before.1, "nothing deleted yet");

    let second = gc(&env.repo, 0.0);
    assert_eq!(second.packs_deleted, first.packs_doomed, "{second:?}");
    assert_eq!(second.packs_doomed, 0);
    assert!(second.bytes_freed > 400_000 / 2, "{second:?}");
    let after = (
        env.repo.usage().unwrap().store_bytes,
        pack_bytes(&env.home()),
    );
    assert_eq!(after.0, after.1);
    assert_eq!(after.1, before.1 - second.bytes_freed, "freed what it said");

    assert_clean(&env.repo);
    std::fs::remove_file(t.path(b"c")).unwrap();
    assert_restores(&env.repo, &t, "web@v1", &s1);
    let third = gc(&env.repo, 0.0);
    assert_eq!(
        (third.packs_doomed, third.packs_deleted),
        (0, 0),
        "{third:?}"
    );
}

/// Regression: packs were named by their bytes alone, so a checkpoint that wrote again exactly
/// the content of a doomed pack re-created the same pack id, which gc could then delete under
/// it. Packs are salted now: the rewrite lands in a new live pack and the doomed one still goes.
#[test]
fn rewritten_content_of_a_doomed_pack_lands_in_a_new_live_pack() {
    let env = Env::new();
    let (t, _, s2) = two_versions(&env);
    env.repo.checkpoint_delete(&r("web@v2")).unwrap();
    let doomed_ids: Vec<_> = {
        assert!(gc(&env.repo, 0.0).packs_doomed > 0);
        env.repo
            .catalog
            .packs()
            .unwrap()
            .into_iter()
            .filter(|p| p.doomed_at.is_some())
            .map(|p| p.id)
            .collect()
    };
    // The same content comes back: its blobs sit in a doomed pack, so they are written again.
    let v3 = checkpoint(&env.repo, "web");
    assert!(
        v3.added_bytes > 0,
        "blobs in a doomed pack were referenced: {v3:?}"
    );
    let packs = env.repo.catalog.packs().unwrap();
    for p in &packs {
        assert_eq!(
            p.doomed_at.is_some(),
            doomed_ids.contains(&p.id),
            "only the old packs stay doomed: {packs:?}"
        );
    }
    let g = gc(&env.repo, 0.0);
    assert_eq!(
        (g.packs_deleted, g.packs_doomed),
        (doomed_ids.len() as u64, 0),
        "{g:?}"
    );
    assert_clean(&env.repo);
    assert_restores(&env.repo, &t, "web@v3", &s2);
}

#[test]
fn a_doomed_pack_referenced_again_is_revived_not_deleted() {
    let env = Env::new();
    let (t, _, s2) = two_versions(&env);
    // As if gc had doomed v2's packs while v2's writer, which had seen them live, committed.
    let v2_packs: Vec<_> = env.repo.catalog.packs().unwrap();
    for p in &v2_packs {
        env.repo.catalog.doom_pack(&p.id, now_ns()).unwrap();
    }
    let g = gc(&env.repo, 0.0);
    assert_eq!(g.packs_revived, v2_packs.len() as u64, "{g:?}");
    assert_eq!(g.packs_deleted, 0, "{g:?}");
    assert!(
        env.repo
            .catalog
            .packs()
            .unwrap()
            .iter()
            .all(|p| p.doomed_at.is_none())
    );
    assert_clean(&env.repo);
    assert_restores(&env.repo, &t, "web@v2", &s2);
}

#[test]
fn an_older_live_session_keeps_doomed_packs_until_it_ends() {
    let env = Env::new();
    let (t, _, s2) = two_versions(&env);
    let v2 = env.repo.resolve(&r("web@v2")).unwrap().1;
    // A writer that started before the doom and built v2's tree from then-live packs.
    let older = env.repo.begin_session("checkpoint").unwrap();
    env.repo.checkpoint_delete(&r("web@v2")).unwrap();
    let first = gc(&env.repo, 0.0);
    assert!(first.packs_doomed > 0, "{first:?}");
    let second = gc(&env.repo, 0.0);
    assert_eq!(
        second.packs_deleted, 0,
        "deleted under a live older session: {second:?}"
    );
    assert!(second.bytes_pending > 0);
    assert_eq!(
        second.orphans_deleted, 0,
        "leftovers swept beside a live session"
    );

    // That writer now commits its tree, which references the doomed packs.
    let m = env.repo.machine_row("web").unwrap();
    env.repo
        .commit(
            &m,
            &v2.root,
            &CheckpointOptions::default(),
            None,
            v2.logical_bytes,
            v2.entries,
            0,
            None,
            Default::default(),
        )
        .unwrap();
    drop(older);
    let third = gc(&env.repo, 0.0);
    assert!(third.packs_revived > 0, "{third:?}");
    assert_eq!(third.packs_deleted, 0, "{third:?}");
    assert_clean(&env.repo);
    assert_restores(&env.repo, &t, "web@v3", &s2);
}

#[test]
fn repacking_a_mostly_dead_pack_keeps_every_live_checkpoint() {
    let env = Env::new();
    let t = TestDir::new(&env.path("m"));
    t.file(b"big", &noise(500_000, 1), 0o644)
        .file(b"small", &noise(3_000, 2), 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    std::fs::remove_file(t.path(b"big")).unwrap();
    t.file(b"other", &noise(1_000, 3), 0o644);
    checkpoint(&env.repo, "web");
    let s2 = snapshot(&t.root);
    env.repo.checkpoint_delete(&r("web@v1")).unwrap();
    let before = pack_bytes(&env.home());

    let first = gc(&env.repo, 0.5);
    assert!(first.packs_repacked > 0, "{first:?}");
    assert_clean(&env.repo);
    let second = gc(&env.repo, 0.5);
    assert!(second.packs_deleted > 0, "{second:?}");
    assert_eq!(
        second.packs_repacked, 0,
        "the repacked pack is all live: {second:?}"
    );
    assert!(
        pack_bytes(&env.home()) < before / 4,
        "{} of {before} bytes left",
        pack_bytes(&env.home())
    );
    assert_clean(&env.repo);
    t.file(b"small", b"clobbered", 0o644);
    assert_restores(&env.repo, &t, "web@v2", &s2);
    // A fork reads only repacked blobs.
    let f = env.path("f");
    fork(&env.repo, "web@v2", "f", &f);
    assert_same(&snapshot(&f), &s2, "fork after repack");
}
