//! The data layer under root's machines: larger files are copied whole to the local disk once
//! and overlayfs reads them there, with every attribute still the view's.

use super::fixture::{TestDir, assert_same, noise, snapshot};
use super::*;
use crate::engine::mounted::CreateMountedOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

/// The copies in the data layer (not counting fills in progress).
fn copies(env: &Env) -> Vec<std::path::PathBuf> {
    let dir = env.repo.data_layer().dir().to_owned();
    let mut out = Vec::new();
    for shard in std::fs::read_dir(&dir).into_iter().flatten() {
        let shard = shard.unwrap();
        if shard.file_name() == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn wait_for_copies(env: &Env, n: usize) -> Vec<std::path::PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = copies(env);
        if c.len() >= n {
            return c;
        }
        assert!(Instant::now() < deadline, "the fill made only {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// gc with no grace and no repack: what is unreachable goes now.
fn gc_at_once() -> crate::engine::gc::GcOptions {
    crate::engine::gc::GcOptions {
        images_max: crate::engine::DEFAULT_IMAGES_MAX,
        grace: Duration::ZERO,
        repack_below: 0.0,
        dry_run: false,
    }
}

fn create(env: &Env, name: &str, from: &str) -> MountedInfo {
    env.repo
        .create_mounted_machine(
            &CreateMountedOptions {
                name: name.into(),
                at: None,
                from: Some(r(from)),
                from_tar: None,
            },
            &NoProgress,
        )
        .unwrap()
}

/// The distinct contents of the non-empty, dense regular files under `dir`: what a view of it
/// copies to the data layer.
fn dense_contents(dir: &std::path::Path) -> std::collections::HashSet<Vec<u8>> {
    let mut out = std::collections::HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() > 0 && m.blocks() * 512 >= m.len() {
                out.insert(std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn files_are_read_from_their_copies_with_the_views_attributes() {
    let env = Env::new();
    let web = env.path("web");
    // Every non-empty dense file is copied, once per content (the fixture's hardlinks share
    // one); the sparse disk image and empty files stay with the view.
    TestDir::full(&web);
    std::fs::write(web.join("usr/lib/bigger"), noise(1 << 20, 77)).unwrap();
    std::fs::write(web.join("usr/lib/bigger-twin"), noise(1 << 20, 77)).unwrap();
    let want = snapshot(&web);
    let contents = dense_contents(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    let info = create(&env, "box", "web@v1");
    env.repo.machine_up("box").unwrap();
    let made = wait_for_copies(&env, contents.len());
    assert_eq!(made.len(), contents.len(), "one copy per content: {made:?}");
    let copied: std::collections::HashSet<Vec<u8>> =
        made.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(copied, contents, "the copies hold exactly the files' bytes");
    for c in &made {
        let m = std::fs::metadata(c).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o444,
            "copies are read-only"
        );
    }
    let layer = std::fs::metadata(env.repo.data_layer().dir()).unwrap();
    assert_eq!(
        layer.permissions().mode() & 0o777,
        0o700,
        "the layer is root's"
    );
    // Their bytes come from the copies: the first reads through the machine send the view
    // no READ. The sparse file's do, which shows the count counts.
    let r0 = env.repo.lower_reads("box");
    let big = std::fs::read(info.at.join("usr/lib/big")).unwrap();
    assert_eq!(big, std::fs::read(web.join("usr/lib/big")).unwrap());
    std::fs::read(info.at.join("etc/passwd")).unwrap();
    assert_eq!(
        env.repo.lower_reads("box"),
        r0,
        "copied files are read from their copies"
    );
    std::fs::read(info.at.join("disk.img")).unwrap();
    assert!(
        env.repo.lower_reads("box") > r0,
        "a sparse file is read through the view"
    );
    // Every attribute through the machine is still the tree's, the copied files' too, before
    // and after their first open.
    assert_same(
        &snapshot(&info.at),
        &want,
        "the machine over its data layer",
    );
    assert_same(&snapshot(&info.at), &want, "after every file was opened");
    let (m, copy) = (
        std::fs::metadata(info.at.join("usr/lib/bigger")).unwrap(),
        std::fs::metadata(
            made.iter()
                .find(|p| std::fs::metadata(p).unwrap().len() == 1 << 20)
                .unwrap(),
        )
        .unwrap(),
    );
    assert!(m.blocks() * 512 >= m.size() && copy.blocks() * 512 >= copy.size());

    // A fork of the same content shares the copies; a chmod (metadata only) keeps reading them.
    checkpoint(&env.repo, "box");
    let fork_info = create(&env, "copy", "box@v2");
    env.repo.machine_up("copy").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(copies(&env), made, "equal content, the same copies");
    std::fs::set_permissions(
        info.at.join("usr/lib/big"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let r0 = env.repo.lower_reads("box");
    assert_eq!(std::fs::read(info.at.join("usr/lib/big")).unwrap(), big);
    assert_eq!(env.repo.lower_reads("box"), r0, "still from the copy");
    let c = checkpoint(&env.repo, "box");
    assert_eq!(c.read_bytes, 0, "a metadata-only copy-up reads nothing");
    assert_eq!(
        std::fs::read(fork_info.at.join("usr/lib/big")).unwrap(),
        big
    );
    env.repo.machine_down("copy").unwrap();
    env.repo.machine_down("box").unwrap();

    // gc keeps copies while a tree holds their file, and removes them after.
    let opts = gc_at_once();
    std::thread::sleep(Duration::from_millis(1100)); // copies made before the mark only
    assert_eq!(env.repo.gc(&opts, &NoProgress).unwrap().copies_deleted, 0);
    assert_eq!(copies(&env), made);
    for m in ["copy", "box", "web"] {
        env.repo.remove_machine(m).unwrap();
    }
    let report = env.repo.gc(&opts, &NoProgress).unwrap();
    assert_eq!(report.copies_deleted, made.len() as u64, "{report:?}");
    assert!(copies(&env).is_empty());
}

#[test]
fn a_trees_own_overlay_attributes_are_plain_data_through_the_machine() {
    let env = Env::new();
    let web = env.path("web");
    // Attributes overlayfs would act on if the view served them as they are: an opaque
    // directory over the rest of the tree, a redirect and a metacopy claim on a file (whose
    // bytes would then be looked for elsewhere), and one it does not know.
    let t = TestDir::new(&web);
    t.dir(b"etc", 0o755)
        .file(b"etc/target", b"the redirect's target", 0o644)
        .dir(b"layer", 0o755)
        .dir(b"layer/a", 0o755)
        .file(b"layer/a/f", b"f's own bytes", 0o644)
        .file(b"layer/a/g", b"g", 0o644)
        .xattr(b"layer/a", "trusted.overlay.opaque", b"y")
        .xattr(b"layer/a/f", "trusted.overlay.redirect", b"/etc/target")
        .xattr(b"layer/a/f", "trusted.overlay.metacopy", b"")
        .xattr(b"layer/a/g", "trusted.overlay.foo", b"bar")
        .stamp(1_600_000_000);
    let want = snapshot(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    let info = create(&env, "box", "web@v1");
    env.repo.machine_up("box").unwrap();
    wait_for_copies(&env, 3);
    assert_same(&snapshot(&info.at), &want, "the machine shows the tree");
    assert_eq!(
        std::fs::read(info.at.join("layer/a/f")).unwrap(),
        b"f's own bytes"
    );

    // Copied up (metadata only, and with new bytes), they land in the checkpoint as they were.
    let f = info.at.join("layer/a/f");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(info.at.join("layer/a/g"), b"new g").unwrap();
    t.chmod(b"layer/a/f", 0o600)
        .file(b"layer/a/g", b"new g", 0o644);
    let changed = snapshot(&web);
    checkpoint(&env.repo, "box");
    env.repo.machine_down("box").unwrap();
    let again = create(&env, "again", "box@v2");
    env.repo.machine_up("again").unwrap();
    let got = snapshot(&again.at);
    for p in [&b"layer/a"[..], b"layer/a/f", b"layer/a/g"] {
        let (g, w) = (&got[p], &changed[p]);
        assert_eq!(
            (&g.xattrs, g.mode, &g.hash),
            (&w.xattrs, w.mode, &w.hash),
            "{p:?}"
        );
    }
    assert_eq!(got.len(), changed.len(), "nothing hidden or added");
    env.repo.machine_down("again").unwrap();
}

#[test]
fn check_read_data_rereads_the_copies_and_rewrites_a_damaged_one() {
    let env = Env::new();
    let web = env.path("web");
    let t = TestDir::new(&web);
    t.file(b"a", &noise(300_000, 1), 0o644)
        .file(b"b", &noise(5_000, 2), 0o644)
        .file(b"c", b"", 0o644);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    let info = create(&env, "box", "web@v1");
    env.repo.machine_up("box").unwrap();
    let made = wait_for_copies(&env, 2);
    env.repo.machine_down("box").unwrap();
    let opts = crate::engine::check::CheckOptions { read_data: true };
    let clean = env.repo.check(&opts, &NoProgress).unwrap();
    assert!(clean.ok(), "{clean:?}");
    assert_eq!(clean.copies, 2, "{clean:?}");

    // One byte of a's copy flips on the disk.
    let victim = made
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 300_000)
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[123_456] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    let quick = env.repo.check(&Default::default(), &NoProgress).unwrap();
    assert!(
        quick.ok() && quick.copies == 0,
        "only --read-data reads copies"
    );
    let found = env.repo.check(&opts, &NoProgress).unwrap();
    assert_eq!(found.findings.len(), 1, "{found:?}");
    let f = &found.findings[0];
    assert!(f.object.starts_with("data layer copy "), "{f:?}");
    assert!(
        f.problem.contains("differ") && f.problem.contains("rewrote"),
        "{f:?}"
    );
    assert_eq!(
        std::fs::read(victim).unwrap(),
        std::fs::read(web.join("a")).unwrap(),
        "the damaged copy is rewritten in place (lower images name it)"
    );
    assert_eq!(
        std::fs::metadata(victim).unwrap().permissions().mode() & 0o777,
        0o444
    );

    // The machine reads the file's own bytes.
    env.repo.machine_up("box").unwrap();
    assert_eq!(
        std::fs::read(info.at.join("a")).unwrap(),
        std::fs::read(web.join("a")).unwrap()
    );
    env.repo.machine_down("box").unwrap();
    let again = env.repo.check(&opts, &NoProgress).unwrap();
    assert!(again.ok() && again.copies == 2, "{again:?}");
}

#[test]
fn a_base_with_a_lower_image_is_mounted_over_it_with_every_attribute_and_no_view() {
    let env = Env::new();
    let web = env.path("web");
    let t = TestDir::full(&web);
    // An attribute overlayfs would act on: the image must keep it plain data.
    t.xattr(b"usr/share", "trusted.overlay.opaque", b"y");
    let want = snapshot(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    let info = create(&env, "box", "web@v1");
    let base = info.base.unwrap();
    assert_eq!(env.repo.machine_up("box").unwrap().lower, "view");
    wait_for_copies(&env, dense_contents(&web).len());
    let built = env.repo.build_lower_image(base).unwrap();
    assert!(built.built, "{built:?}");
    assert!(built.bytes > 0, "the sparse file is kept whole: {built:?}");
    let again = env.repo.build_lower_image(base).unwrap();
    assert!(!again.built, "an image is built once");
    // Stubs hold no data (at most a block of attributes): the image is metadata and the
    // sparse file.
    let big = built.path.join("usr/lib/big");
    assert!(std::fs::metadata(&big).unwrap().blocks() * 512 <= 8192);
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 300_000);
    // Small files are whole in the image (a stub's own bytes read as zeros).
    assert_eq!(
        std::fs::read(built.path.join("etc/hostname")).unwrap(),
        std::fs::read(web.join("etc/hostname")).unwrap()
    );

    env.repo.machine_down("box").unwrap();
    let up = env.repo.machine_up("box").unwrap();
    assert_eq!(up.lower, "image", "{up:?}");
    let m = env.repo.machine_row("box").unwrap();
    let lower = env.repo.layout(&m).lower;
    assert!(
        crate::mount::mount_at(&lower).unwrap().is_none(),
        "no view is served"
    );
    assert_same(&snapshot(&info.at), &want, "the machine over its image");
    // Up again finds it up; a second machine of the same base shares the image.
    assert!(env.repo.machine_up("box").unwrap().already_up);
    let twin = create(&env, "twin", "web@v1");
    assert_eq!(env.repo.machine_up("twin").unwrap().lower, "image");
    assert_same(
        &snapshot(&twin.at),
        &want,
        "a second machine over the image",
    );
    env.repo.machine_down("twin").unwrap();

    // Changes over the image land in a checkpoint exactly: new bytes, a metadata-only
    // copy-up of a copied file, a deletion, a renamed directory.
    std::fs::write(info.at.join("etc/hostname"), b"changed\n").unwrap();
    std::fs::set_permissions(
        info.at.join("usr/lib/big"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(info.at.join("cap")).unwrap();
    std::fs::rename(info.at.join("usr/lib/deep"), info.at.join("usr/lib/moved")).unwrap();
    let edited = snapshot(&info.at);
    checkpoint(&env.repo, "box");
    env.repo.machine_down("box").unwrap();
    let next = create(&env, "next", "box@v2");
    assert_eq!(env.repo.machine_up("next").unwrap().lower, "view");
    assert_same(
        &snapshot(&next.at),
        &edited,
        "the checkpoint taken over the image",
    );
    env.repo.machine_down("next").unwrap();

    // gc keeps the image while its tree is reachable and removes it after.
    let opts = gc_at_once();
    std::thread::sleep(Duration::from_millis(1100)); // images made before the mark only
    assert_eq!(env.repo.gc(&opts, &NoProgress).unwrap().images_deleted, 0);
    assert!(built.path.is_dir());
    for m in ["next", "twin", "box", "web"] {
        env.repo.remove_machine(m).unwrap();
    }
    let report = env.repo.gc(&opts, &NoProgress).unwrap();
    assert_eq!(report.images_deleted, 1, "{report:?}");
    assert!(!built.path.exists());
}

/// A fill copies the files a lower image names (those over `DATA_LARGE_FIRST`) before the
/// ones an image holds whole, so the image can be built before the whole fill is over.
#[test]
fn the_fill_copies_the_large_files_first() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    checkpoint(&env.repo, "web");
    create(&env, "box", "web@v1");
    env.repo.machine_up("box").unwrap();
    let all = wait_for_copies(&env, dense_contents(&web).len());
    let (large, small): (Vec<_>, Vec<_>) = all
        .iter()
        .map(|p| std::fs::metadata(p).unwrap())
        .partition(|m| m.len() > crate::mount::DATA_LARGE_FIRST);
    assert!(!large.is_empty() && !small.is_empty(), "{all:?}");
    let written = |m: &std::fs::Metadata| (m.mtime(), m.mtime_nsec());
    let last_large = large.iter().map(written).max().unwrap();
    let first_small = small.iter().map(written).min().unwrap();
    assert!(
        last_large <= first_small,
        "a small file was copied before a large one"
    );
    env.repo.machine_down("box").unwrap();
}

/// gc keeps the lower images of machines' bases whatever their size, and trims the others to
/// `images_max`, least recently used first; the trees themselves stay.
#[test]
fn gc_trims_the_images_no_machine_stands_on_least_recently_used_first() {
    let env = Env::new();
    let web = env.path("web");
    TestDir::full(&web);
    adopt(&env.repo, "web", &web);
    let mut trees = Vec::new();
    for v in 1..=3 {
        std::fs::write(web.join("etc/hostname"), format!("web {v}\n")).unwrap();
        checkpoint(&env.repo, "web");
        let info = create(&env, &format!("box{v}"), &format!("web@v{v}"));
        trees.push(info.base.unwrap());
    }
    let images: Vec<_> = trees
        .iter()
        .map(|t| {
            let built = env.repo.build_lower_image(*t).unwrap();
            assert!(built.built, "{built:?}");
            std::thread::sleep(Duration::from_millis(20));
            built.path
        })
        .collect();
    // box1 stays on its base; the other two trees are only checkpoints now. Of their images,
    // the second was used after the third was made.
    env.repo.remove_machine("box2").unwrap();
    env.repo.remove_machine("box3").unwrap();
    env.repo.note_image_used(trees[1]);
    let size = |p: &std::path::Path| crate::engine::image::disk_usage(p).unwrap();
    let total: u64 = images.iter().map(|p| size(p)).sum();

    let mut opts = gc_at_once();
    let report = env.repo.gc(&opts, &NoProgress).unwrap();
    assert_eq!(
        report.images_evicted, 0,
        "within the default budget: {report:?}"
    );
    assert!(images.iter().all(|p| p.is_dir()));

    // One byte too many: the least recently used goes, and a dry run says so first.
    opts.images_max = total - 1;
    opts.dry_run = true;
    assert_eq!(env.repo.gc(&opts, &NoProgress).unwrap().images_evicted, 1);
    assert!(images[2].is_dir(), "a dry run removes nothing");
    opts.dry_run = false;
    let report = env.repo.gc(&opts, &NoProgress).unwrap();
    assert_eq!(report.images_evicted, 1, "{report:?}");
    assert!(images[0].is_dir() && images[1].is_dir() && !images[2].exists());
    assert!(report.bytes_freed >= size(&images[0]).min(1), "{report:?}");

    // No budget at all: every image but the base's goes.
    opts.images_max = 0;
    let report = env.repo.gc(&opts, &NoProgress).unwrap();
    assert_eq!(report.images_evicted, 1, "{report:?}");
    assert!(images[0].is_dir() && !images[1].exists());
    // The trees are intact: a machine of an evicted image's tree comes up over a view.
    let again = create(&env, "again", "web@v3");
    assert_eq!(env.repo.machine_up("again").unwrap().lower, "view");
    assert_eq!(
        std::fs::read(again.at.join("etc/hostname")).unwrap(),
        b"web 3\n"
    );
    env.repo.machine_down("again").unwrap();
    let check = env.repo.check(&Default::default(), &NoProgress).unwrap();
    assert!(check.ok(), "{check:?}");
}
