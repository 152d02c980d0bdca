//! Upper-layer ingest against the truth: a real overlayfs over a checkpointed tree is changed
//! through its merged view; ingesting only the upper layer over the base tree must give the
//! very tree (same id, same totals) that ingesting the merged view gives.

use super::fixture::{TestDir, noise};
use super::*;
use crate::engine::blobs::{BlobSource, BlobWriter};
use crate::engine::ingest::{IngestOptions, Ingested, ingest};
use crate::engine::statcache::StatCache;
use crate::engine::upper::{TRUSTED_PREFIX, USER_PREFIX, UpperBase};
use crate::model::{Content, TreeId};
use crate::rootfs::Dir;
use std::ffi::OsStr;
use std::io::{BufRead, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// An overlay mounted for the life of the value.
struct Overlay {
    merged: PathBuf,
    upper: PathBuf,
    /// The private xattr prefix the overlay writes into its upper.
    prefix: &'static [u8],
    /// For a mount in a user namespace: the process that holds the namespace (and so the
    /// mount) until its stdin closes.
    holder: Option<Child>,
}

impl Overlay {
    /// Mounts `lower` under a new upper directory whose root carries the lower root's
    /// metadata, as a mounted machine's upper does when it starts.
    fn mount(tmp: &Path, lower: &Path) -> Overlay {
        Overlay::mount_with(tmp, lower, "redirect_dir=off,metacopy=off,index=off")
    }

    /// As root's machines mount theirs: renaming a directory with a lower one records a
    /// redirect, and a chmod, chown or xattr change of a lower file copies up only metadata.
    fn mount_metacopy(tmp: &Path, lower: &Path) -> Overlay {
        Overlay::mount_with(tmp, lower, "redirect_dir=on,metacopy=on,index=off,xino=off")
    }

    fn mount_with(tmp: &Path, lower: &Path, features: &str) -> Overlay {
        let (upper, work, merged) = layers(tmp, lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{features}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(st.success(), "mount overlay: {st}");
        Overlay {
            merged,
            upper,
            prefix: TRUSTED_PREFIX,
            holder: None,
        }
    }

    /// Mounts the same overlay as an unprivileged user would: from inside a new user and
    /// mount namespace, with `userxattr`, so its whiteouts and opaque markers are the
    /// `user.overlay.*` kind. Every uid and gid below 65536 maps to itself, so ownership
    /// reads the same on both sides. The mount lives in the holder's namespace; this process
    /// reaches it through `/proc/<holder>/root`.
    fn mount_in_user_namespace(tmp: &Path, lower: &Path) -> Overlay {
        let (upper, work, merged) = layers(tmp, lower);
        // `redirect_dir=off` would follow redirects, which `userxattr` forbids; `nofollow`
        // neither makes nor follows them.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},userxattr,redirect_dir=nofollow,metacopy=off,\
             index=off,xino=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let script = format!(
            "read go && mount -t overlay overlay -o '{opts}' '{}' && echo mounted && read end",
            merged.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--user", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = holder.id();
        // The id maps can be written once the holder has its own user namespace.
        let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap() == ours {
            assert!(std::time::Instant::now() < deadline, "unshare never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), "0 0 65536\n").unwrap();
        }
        let mut stdin = holder.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "mounted\n", "mount overlay in a user namespace");
        holder.stdin = Some(stdin);
        let inside =
            PathBuf::from(format!("/proc/{pid}/root")).join(merged.strip_prefix("/").unwrap());
        Overlay {
            merged: inside,
            upper,
            prefix: USER_PREFIX,
            holder: Some(holder),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.merged.join(rel)
    }
}

/// The upper, work and merged directories of an overlay in `tmp`, the upper carrying the
/// lower root's metadata, as a mounted machine's upper does when it starts.
fn layers(tmp: &Path, lower: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dirs = ["upper", "work", "merged"].map(|n| tmp.join(n));
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    copy_dir_meta(lower, &dirs[0]);
    let [upper, work, merged] = dirs;
    (upper, work, merged)
}

impl Drop for Overlay {
    fn drop(&mut self) {
        match &mut self.holder {
            // Its namespace, and the mount with it, ends with the holder.
            Some(holder) => {
                drop(holder.stdin.take());
                let _ = holder.wait();
            }
            None => {
                let _ = Command::new("umount").arg(&self.merged).status();
            }
        }
    }
}

fn copy_dir_meta(from: &Path, to: &Path) {
    let m = std::fs::symlink_metadata(from).unwrap();
    std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid())).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    for name in xattr_names(from) {
        let mut buf = vec![0u8; 65536];
        let n = rustix::fs::lgetxattr(from, name.as_slice(), &mut buf).unwrap();
        rustix::fs::lsetxattr(
            to,
            name.as_slice(),
            &buf[..n],
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let t = rustix::fs::Timespec {
        tv_sec: m.mtime(),
        tv_nsec: m.mtime_nsec(),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        to,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
}

fn xattr_names(p: &Path) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
    buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Ingests `dir` without storing anything, leaving its trees readable from `src`; `base` makes
/// it an upper-layer ingest over that checkpoint.
fn ingest_dry(
    env: &Env,
    src: &BlobSource<'_>,
    dir: &Path,
    base: Option<(&CheckpointReport, &'static [u8])>,
) -> Ingested {
    let writer = BlobWriter::new_dry(&env.repo.store, &env.repo.catalog_path()).unwrap();
    let cache = StatCache::default();
    let upper = base.map(|(c, xattr_prefix)| UpperBase {
        src,
        root: c.checkpoint.root,
        entries: c.checkpoint.entries,
        logical: c.checkpoint.logical_bytes,
        xattr_prefix,
    });
    let opts = IngestOptions {
        progress: &NoProgress,
        cache: &cache,
        trust_cache: false,
        workers: 2,
        upper,
    };
    let ing = ingest(&Dir::open(dir).unwrap(), &writer, &opts).unwrap();
    src.seed(writer.take_trees());
    ing
}

/// Every path of a tree with its node (directories by metadata only), for readable failures.
fn flatten(src: &BlobSource<'_>, root: TreeId) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(Vec::new(), root)];
    while let Some((path, id)) = stack.pop() {
        for e in &src.tree(id).unwrap().entries {
            let p = join_path(&path, &e.name);
            let shown = String::from_utf8_lossy(&p).into_owned();
            match &e.node.content {
                Content::Dir { tree } => {
                    out.push(format!("{shown} dir {:?}", e.node.meta));
                    stack.push((p, *tree));
                }
                _ => out.push(format!("{shown} {:?}", e.node)),
            }
        }
    }
    out.sort();
    out
}

/// Checkpoints a full fixture, mounts an overlay over it, applies `change` through the merged
/// view, and checks the upper-layer ingest against the merged-view ingest.
fn upper_matches_merged(change: impl Fn(&Overlay)) {
    for mount in [Overlay::mount, Overlay::mount_metacopy] {
        full_upper_matches_merged(&change, mount);
    }
}

/// The check over the full fixture, with the overlay `mount` makes.
fn full_upper_matches_merged(change: impl FnOnce(&Overlay), mount: fn(&Path, &Path) -> Overlay) {
    let env = Env::new();
    let lower = env.path("lower");
    TestDir::full(&lower);
    check_upper_against_merged(&env, &lower, change, mount);
}

/// The same check for an overlay mounted in a user namespace. Such a mount cannot see
/// `trusted.*` xattrs at all, so the fixture carries none; everything else is the full one.
fn upper_matches_merged_in_user_namespace(change: impl FnOnce(&Overlay)) {
    let env = Env::new();
    let lower = env.path("lower");
    TestDir::full(&lower);
    for (p, name) in [("cap", "trusted.cairn"), ("rel-link", "trusted.on-symlink")] {
        rustix::fs::lremovexattr(lower.join(p), name).unwrap();
    }
    check_upper_against_merged(&env, &lower, change, Overlay::mount_in_user_namespace);
}

fn check_upper_against_merged(
    env: &Env,
    lower: &Path,
    change: impl FnOnce(&Overlay),
    mount: fn(&Path, &Path) -> Overlay,
) {
    adopt(&env.repo, "m", lower);
    let base = checkpoint(&env.repo, "m");
    let ov = mount(env.tmp.path(), lower);
    change(&ov);
    let src = BlobSource::new(&env.repo.store, &env.repo.catalog_path()).unwrap();
    let want = ingest_dry(env, &src, &ov.merged, None);
    let got = ingest_dry(env, &src, &ov.upper, Some((&base, ov.prefix)));
    assert_eq!(flatten(&src, got.root), flatten(&src, want.root));
    assert_eq!(got.root, want.root);
    assert_eq!(got.entries, want.entries, "entry count");
    assert_eq!(got.logical_bytes, want.logical_bytes, "logical bytes");
}

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
}

#[test]
fn unchanged_upper_is_the_base() {
    upper_matches_merged(|_| {});
}

#[test]
fn edits_deletions_replacements_and_metadata_changes() {
    upper_matches_merged(fixed_changes);
}

#[test]
fn in_a_user_namespace_user_overlay_whiteouts_and_opaque_dirs_land_too() {
    upper_matches_merged_in_user_namespace(|ov| {
        fixed_changes(ov);
        // The upper really holds the unprivileged kind of markers.
        let opaque = rustix::fs::lgetxattr(
            ov.upper.join("usr/lib/deep"),
            "user.overlay.opaque",
            &mut [0u8; 8],
        );
        assert_eq!(
            opaque.ok(),
            Some(1),
            "user.overlay.opaque on the recreated directory"
        );
        let whiteout = std::fs::symlink_metadata(ov.upper.join("usr/lib/big")).unwrap();
        assert!(
            whiteout.file_type().is_char_device() && whiteout.rdev() == 0,
            "a 0/0 whiteout"
        );
    });
}

#[test]
fn in_a_user_namespace_hardlink_groups_are_re_formed() {
    upper_matches_merged_in_user_namespace(|ov| {
        std::fs::rename(ov.path("etc/passwd"), ov.path("etc/passwd.old")).unwrap();
        write(
            &ov.path("usr/share/passwd-link"),
            b"copied up and broken off",
        );
        write(&ov.path("etc/one"), b"linked");
        std::fs::hard_link(ov.path("etc/one"), ov.path("usr/two")).unwrap();
    });
}

/// Edits, deletions, replacements (a file by a directory and back), metadata-only changes,
/// renames, a new fifo and odd names.
fn fixed_changes(ov: &Overlay) {
    write(&ov.path("etc/hostname"), b"changed\n");
    write(&ov.path("newfile"), &noise(200_000, 42));
    std::fs::remove_file(ov.path("usr/lib/big")).unwrap();
    std::fs::remove_dir_all(ov.path("usr/lib/deep")).unwrap();
    std::fs::create_dir(ov.path("usr/lib/deep")).unwrap();
    write(&ov.path("usr/lib/deep/fresh"), b"opaque now");
    std::fs::set_permissions(ov.path("suid"), std::fs::Permissions::from_mode(0o700)).unwrap();
    rustix::fs::lsetxattr(
        ov.path("acl"),
        "user.added",
        b"xattr only",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::remove_file(ov.path("dangling")).unwrap();
    symlink("somewhere/else", ov.path("dangling")).unwrap();
    std::fs::remove_dir(ov.path("empty-dir")).unwrap();
    write(&ov.path("empty-dir"), b"a file where a dir was");
    std::fs::remove_file(ov.path("empty")).unwrap();
    std::fs::create_dir(ov.path("empty")).unwrap();
    std::fs::remove_dir_all(ov.path("sgid")).unwrap();
    std::fs::rename(ov.path("rel-link"), ov.path("etc/moved-link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ov.path("dev/newfifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    write(
        &ov.merged.join(OsStr::from_bytes(b"\xc3(dir/inner")),
        b"odd name, new data",
    );
    std::fs::remove_file(ov.merged.join(OsStr::from_bytes(b"bad-utf8-\xff\xfe"))).unwrap();
}

#[test]
fn hardlink_leader_renamed_away_promotes_a_follower() {
    upper_matches_merged(|ov| {
        std::fs::rename(ov.path("etc/passwd"), ov.path("etc/passwd.old")).unwrap();
    });
}

#[test]
fn hardlink_follower_removed_or_rewritten() {
    upper_matches_merged(|ov| {
        std::fs::remove_file(ov.path("zz-passwd")).unwrap();
        write(
            &ov.path("usr/share/passwd-link"),
            b"copied up and broken off",
        );
    });
}

#[test]
fn whole_hardlink_group_removed_and_new_groups_made() {
    upper_matches_merged(|ov| {
        for p in ["etc/passwd", "usr/share/passwd-link", "zz-passwd"] {
            std::fs::remove_file(ov.path(p)).unwrap();
        }
        write(&ov.path("etc/one"), b"linked");
        std::fs::hard_link(ov.path("etc/one"), ov.path("usr/two")).unwrap();
        std::fs::hard_link(ov.path("etc/hostname"), ov.path("aaa-hostname")).unwrap();
    });
}

#[test]
fn directory_holding_hardlinks_removed() {
    upper_matches_merged(|ov| {
        std::fs::remove_dir_all(ov.path("etc")).unwrap();
    });
}

/// A small deterministic generator for the random-change trials.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every path under `root` (not following symlinks), parents before children.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// One random change through the merged view, of the kinds a machine's processes make.
fn random_change(ov: &Overlay, rng: &mut Rng, n: usize) {
    let paths = all_paths(&ov.merged);
    let p = &paths[rng.below(paths.len())];
    let m = std::fs::symlink_metadata(p).unwrap();
    let dirs: Vec<&PathBuf> = paths
        .iter()
        .filter(|q| std::fs::symlink_metadata(q).unwrap().is_dir())
        .collect();
    let some_dir = if dirs.is_empty() || rng.below(4) == 0 {
        ov.merged.clone()
    } else {
        dirs[rng.below(dirs.len())].clone()
    };
    let fresh = some_dir.join(format!("new-{n}"));
    match rng.below(10) {
        0 if m.is_file() => write(p, &noise(rng.below(200_000), rng.next())),
        1 if m.is_file() => {
            let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            std::io::Write::write_all(&mut &f, b"appended").unwrap();
        }
        2 if !m.file_type().is_symlink() => {
            let mode = [0o600, 0o755, 0o4755, 0o1777, 0o640][rng.below(5)];
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        3 => {
            let name = format!("user.r{}", rng.below(3));
            if m.is_file() || m.is_dir() {
                rustix::fs::lsetxattr(p, name.as_str(), b"v", rustix::fs::XattrFlags::empty())
                    .unwrap();
            }
        }
        4 if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        4 | 5 if !m.is_dir() => std::fs::remove_file(p).unwrap(),
        // A directory moves only where overlayfs records a redirect (root's machines); it
        // refuses (EXDEV) elsewhere, and never into itself.
        6 => {
            let _ = std::fs::rename(p, &fresh);
        }
        7 if m.is_file() => std::fs::hard_link(p, &fresh).unwrap(),
        8 => std::fs::create_dir(&fresh).unwrap(),
        _ => write(&fresh, &noise(rng.below(5000), rng.next())),
    }
}

#[test]
fn random_changes_match_the_merged_view() {
    let seed = std::env::var("CAIRN_UPPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ns() as u64 | 1);
    for trial in 0..10u64 {
        let mut rng = Rng(seed.wrapping_add(trial.wrapping_mul(0x9e37_79b9)) | 1);
        let ops = 1 + rng.below(25);
        eprintln!("trial {trial}: seed {seed}, {ops} changes (replay with CAIRN_UPPER_SEED)");
        // Root's overlay (redirects, metadata-only copy-ups) in odd trials.
        let mount = [Overlay::mount, Overlay::mount_metacopy][trial as usize % 2];
        full_upper_matches_merged(
            |ov| {
                for n in 0..ops {
                    random_change(ov, &mut rng, n);
                }
            },
            mount,
        );
    }
}

/// The names of the overlay-private xattrs `p` carries in the upper, without the prefix.
fn private_marks(ov: &Overlay, rel: &str) -> Vec<Vec<u8>> {
    xattr_names(&ov.upper.join(rel))
        .into_iter()
        .filter_map(|n| n.strip_prefix(ov.prefix).map(<[u8]>::to_vec))
        .filter(|n| n == b"redirect" || n == b"metacopy")
        .collect()
}

#[test]
fn redirected_directories_and_metadata_only_copy_ups_land_exactly() {
    full_upper_matches_merged(
        |ov| {
            // Metadata-only copy-ups: mode, owner, an xattr; the bytes stay in the lower.
            std::fs::set_permissions(
                ov.path("usr/lib/big"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            std::os::unix::fs::lchown(ov.path("disk.img"), Some(7), Some(8)).unwrap();
            rustix::fs::lsetxattr(
                ov.path("cap"),
                "user.new",
                b"v",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
            // A hardlink member copied up by metadata: its group loses it.
            std::fs::set_permissions(ov.path("zz-passwd"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            // Renamed in place (a relative redirect), then changed inside.
            std::fs::rename(ov.path("usr/lib"), ov.path("usr/lib64")).unwrap();
            write(&ov.path("usr/lib64/deep/er/added"), b"new in a moved dir");
            // Moved to another parent (an absolute redirect), holding a hardlink member.
            std::fs::rename(ov.path("usr/share"), ov.path("etc/share")).unwrap();
            // A metadata-only copy-up renamed: its redirect names its lower file.
            std::fs::rename(ov.path("usr/lib64/big"), ov.path("etc/big-moved")).unwrap();
            // Moved twice, and a directory moved into a new directory.
            std::fs::rename(ov.path("sgid"), ov.path("tmp/sgid-1")).unwrap();
            std::fs::rename(ov.path("tmp/sgid-1"), ov.path("sgid-2")).unwrap();
            std::fs::create_dir(ov.path("fresh")).unwrap();
            std::fs::rename(ov.path("dev"), ov.path("fresh/dev")).unwrap();
            // The upper really holds both kinds of mark.
            assert_eq!(private_marks(ov, "usr/lib64"), [b"redirect".to_vec()]);
            assert_eq!(private_marks(ov, "etc/share"), [b"redirect".to_vec()]);
            assert_eq!(private_marks(ov, "cap"), [b"metacopy".to_vec()]);
            let mut moved = private_marks(ov, "etc/big-moved");
            moved.sort();
            assert_eq!(moved, [b"metacopy".to_vec(), b"redirect".to_vec()]);
        },
        Overlay::mount_metacopy,
    );
}

#[test]
fn a_hardlink_in_a_directory_moved_into_a_new_directory_stays_in_its_group() {
    // Found by the random test: the leader (etc/passwd) is copied up by a chmod, and
    // usr/share, holding a follower, moves into a directory made in the upper. The regrouping
    // walk skipped every upper directory, so it missed the follower there and left it naming
    // the lost leader.
    full_upper_matches_merged(
        |ov| {
            std::fs::set_permissions(
                ov.path("etc/passwd"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            std::fs::create_dir(ov.path("usr/new")).unwrap();
            std::fs::rename(ov.path("usr/share"), ov.path("usr/new/share")).unwrap();
        },
        Overlay::mount_metacopy,
    );
}

#[test]
fn a_hardlink_leader_moved_with_its_directory_is_counted_once() {
    // `etc` (holding the leader, etc/passwd) moves after its followers in tree order: the
    // first visible member leads now, and the leader's bytes were already counted where the
    // redirect shows them.
    full_upper_matches_merged(
        |ov| std::fs::rename(ov.path("etc"), ov.path("zz-etc")).unwrap(),
        Overlay::mount_metacopy,
    );
}
