//! Cgroups: membership from the first instruction, freezing, killing, reuse and removal, on
//! cgroup v2 and on the v1 freezer fallback.

use super::*;
use crate::sandbox::cgroup::{CgroupMounts, Flavor, parse_mountinfo};
use crate::sandbox::{Cgroup, SandboxError, spawn_sandboxed};
use std::process::Child;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn mountinfo_finds_both_hierarchies_wherever_they_are() {
    assert_eq!(
        parse_mountinfo(HYBRID),
        CgroupMounts {
            v2: Some("/sys/fs/cgroup/unified".into()),
            v1_freezer: Some("/sys/fs/cgroup/freezer".into()),
        }
    );
    let pure = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
                99 30 0:26 / /mnt/again rw - cgroup2 cgroup2 rw\n\
                50 24 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,freezer,cpu\n";
    assert_eq!(
        parse_mountinfo(pure),
        CgroupMounts {
            v2: Some("/sys/fs/cgroup".into()),
            v1_freezer: Some("/mnt/with space".into()),
        }
    );
    assert_eq!(parse_mountinfo("garbage\n"), CgroupMounts::default());
    // Not an escape the kernel writes (above \377): kept as it is, no panic.
    let odd = "1 1 0:1 / /odd\\777 rw - cgroup2 cgroup2 rw\n";
    assert_eq!(parse_mountinfo(odd).v2, Some("/odd\\777".into()));
}

#[test]
fn names_are_one_safe_path_component() {
    for bad in [
        "",
        "..",
        ".hidden",
        "a/b",
        "cgroup.procs",
        "sp ace",
        &"x".repeat(201),
    ] {
        let err = Cgroup::open_or_create(bad).unwrap_err();
        assert!(
            matches!(err, SandboxError::BadName { .. }),
            "{bad:?}: {err}"
        );
    }
}

/// The v1 freezer hierarchy: the host's if mounted, else one mounted for the test (a pure v2
/// host still has the v1 freezer controller to mount).
struct V1Freezer {
    root: PathBuf,
    _mounted: Option<tempfile::TempDir>,
}

impl V1Freezer {
    fn get() -> V1Freezer {
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        if let Some(root) = parse_mountinfo(&info).v1_freezer {
            return V1Freezer {
                root,
                _mounted: None,
            };
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "cgroup", "-o", "freezer", "cairn-test-freezer"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a v1 freezer hierarchy for the test failed"
        );
        V1Freezer {
            root: dir.path().to_owned(),
            _mounted: Some(dir),
        }
    }

    fn cgroup(&self, tag: &str) -> TestCgroup {
        let parent = self.root.join("cairn");
        let _ = fs::create_dir(&parent);
        TestCgroup::wrap(
            Cgroup::open_at(Flavor::V1Freezer, &parent, &unique_name(tag)).expect("v1"),
        )
    }
}

impl Drop for V1Freezer {
    fn drop(&mut self) {
        if self._mounted.is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

/// Starts `script` in the background inside `root`, in `cg`.
fn start(root: &MiniRoot, cg: &Cgroup, script: &str) -> Child {
    spawn_sandboxed(&root.sh(script), Some(cg)).expect("spawn")
}

#[test]
fn a_spawned_process_is_in_the_cgroup_and_kill_all_empties_it() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("kill");
    assert!(cg.is_empty().expect("is_empty"));
    let mut child = start(&root, &cg, "sleep 1000");
    // bwrap itself joined before exec, so the cgroup is never seen empty after spawn returns.
    let pids = cg.pids().expect("pids");
    assert!(
        pids.contains(&child.id()),
        "{pids:?} lacks bwrap {}",
        child.id()
    );
    assert!(wait_for(Duration::from_secs(5), || cg
        .pids()
        .expect("pids")
        .len()
        >= 3));
    assert!(!cg.is_empty().expect("is_empty"));

    let report = cg.kill_all(Duration::from_secs(5)).expect("kill_all");
    assert!(report.killed >= 3, "{report:?}");
    assert!(cg.is_empty().expect("is_empty"));
    assert!(!child.wait().expect("wait").success());

    let path = cg.path().to_owned();
    cg.take().remove().expect("remove");
    assert!(!path.exists());
}

/// A loop that writes an ever-growing counter into the machine's /tmp/count.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; done";

fn count(root: &MiniRoot) -> Vec<u8> {
    fs::read(root.path().join("tmp/count")).unwrap_or_default()
}

/// Freezing really stops the counter; thawing lets it go on.
fn freeze_stops_and_thaw_resumes(root: &MiniRoot, cg: &Cgroup) {
    let mut child = start(root, cg, COUNTER);
    assert!(wait_for(Duration::from_secs(5), || !count(root).is_empty()));

    let guard = cg.freeze_guard(Duration::from_secs(10)).expect("freeze");
    assert!(guard.took() > Duration::ZERO && guard.took() < Duration::from_secs(10));
    assert!(cg.is_frozen().expect("is_frozen"));
    let frozen_at = count(root);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(root), frozen_at, "the counter moved while frozen");

    drop(guard);
    assert!(!cg.is_frozen().expect("is_frozen"));
    assert!(
        wait_for(Duration::from_secs(5), || count(root) != frozen_at),
        "the counter did not resume after thaw"
    );
    cg.kill_all(Duration::from_secs(5)).expect("kill_all");
    child.wait().expect("wait");
}

#[test]
fn freeze_stops_the_processes_and_thaw_resumes_them() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("freeze");
    freeze_stops_and_thaw_resumes(&root, &cg);
}

#[test]
fn the_v1_freezer_fallback_freezes_and_kills_too() {
    let v1 = V1Freezer::get();
    let root = MiniRoot::new();
    let cg = v1.cgroup("v1");
    freeze_stops_and_thaw_resumes(&root, &cg);

    let mut child = start(&root, &cg, "sleep 1000 & sleep 1000 & wait");
    assert!(wait_for(Duration::from_secs(5), || cg
        .pids()
        .expect("pids")
        .len()
        >= 4));
    cg.freeze(Duration::from_secs(10)).expect("freeze");
    // Killing a frozen v1 cgroup must thaw it, or nothing could die.
    let report = cg.kill_all(Duration::from_secs(10)).expect("kill_all");
    assert!(report.killed >= 4, "{report:?}");
    assert!(cg.is_empty().expect("is_empty") && !cg.is_frozen().expect("is_frozen"));
    child.wait().expect("wait");
    cg.take().remove().expect("remove");
}

#[test]
fn kill_all_without_cgroup_kill_signals_every_process() {
    let root = MiniRoot::new();
    let mut cg = TestCgroup::new("signal-kill");
    cg.0.as_mut().expect("present").forget_cgroup_kill();
    let mut child = start(
        &root,
        &cg,
        "i=0; while [ $i -lt 50 ]; do sleep 1000 & i=$((i+1)); done; wait",
    );
    assert!(wait_for(Duration::from_secs(10), || cg
        .pids()
        .expect("pids")
        .len()
        >= 52));
    let report = cg.kill_all(Duration::from_secs(10)).expect("kill_all");
    assert!(report.killed >= 52, "{report:?}");
    assert!(cg.is_empty().expect("is_empty"));
    child.wait().expect("wait");
}

#[test]
fn a_leftover_cgroup_is_reused_even_frozen_and_busy_removal_is_refused() {
    let root = MiniRoot::new();
    let name = unique_name("leftover");
    let first = TestCgroup::wrap(Cgroup::open_or_create(&name).expect("create"));
    // A command that has exited leaves an empty cgroup behind, a moment later: bubblewrap
    // reports the exit before its reaper (pid 1 inside) is gone.
    let out = output(&root.sh("true"), &first);
    assert!(out.status.success());
    assert!(wait_for(Duration::from_secs(5), || first
        .is_empty()
        .expect("is_empty")));

    let mut child = start(&root, &first, "sleep 1000");
    // A crashed checkpoint leaves the cgroup frozen: nothing thaws it but the next owner.
    first.freeze(Duration::from_secs(10)).expect("freeze");
    let again = Cgroup::open_or_create(&name).expect("reopen");
    assert_eq!(again.path(), first.path());
    assert!(again.is_frozen().expect("is_frozen"));
    again.thaw().expect("thaw");
    assert!(!first.is_frozen().expect("is_frozen"));

    let busy = again.remove().unwrap_err();
    assert!(matches!(busy, SandboxError::Busy { .. }), "{busy}");
    first.kill_all(Duration::from_secs(5)).expect("kill_all");
    child.wait().expect("wait");
    let first = first.take();
    let path = first.path().to_owned();
    first.remove().expect("remove");
    // Removing twice, or a cgroup someone else removed, is not an error.
    Cgroup::open_or_create(&name)
        .expect("recreate")
        .remove()
        .expect("remove");
    assert!(!path.exists());
}

/// A FUSE mount whose server never answers: every access waits in the kernel, in a wait that
/// only a fatal signal interrupts, as a machine's process does while a FUSE view is stalled.
/// Dropping it closes the device, which aborts the connection and fails those waits.
struct DeafFuse {
    dir: tempfile::TempDir,
    dev: Option<fs::File>,
}

impl DeafFuse {
    fn mount() -> DeafFuse {
        use std::os::fd::AsRawFd;
        let dev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let dir = tempfile::tempdir().expect("tempdir");
        let target =
            std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
        let opts = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
        let opts = std::ffi::CString::new(opts).expect("options");
        // SAFETY: valid C strings; the options name an fd that `dev` keeps open.
        let rc = unsafe {
            libc::mount(
                c"cairn-test".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount fuse: {}", std::io::Error::last_os_error());
        DeafFuse {
            dir,
            dev: Some(dev),
        }
    }
}

impl Drop for DeafFuse {
    fn drop(&mut self) {
        drop(self.dev.take());
        let target = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes());
        if let Ok(target) = target {
            // SAFETY: a valid C string path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn a_freeze_blocked_by_a_stalled_fuse_request_times_out_and_thaws() {
    let fuse = DeafFuse::mount();
    let cg = TestCgroup::new("fuse");
    let mut reader = Command::new("/bin/cat")
        .arg(fuse.dir.path().join("file"))
        .spawn()
        .expect("spawn cat");
    // Outside the runner, so joined from here; the race does not matter to this test.
    fs::write(cg.path().join("cgroup.procs"), reader.id().to_string()).expect("join");
    std::thread::sleep(Duration::from_millis(100));

    let err = cg.freeze(Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(err, SandboxError::FreezeTimeout { pids: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("FUSE"), "{err}");
    assert!(!cg.is_frozen().expect("is_frozen"));
    // SIGKILL does end the wait.
    cg.kill_all(Duration::from_secs(5)).expect("kill_all");
    assert!(!reader.wait().expect("wait").success());
}

#[test]
fn a_command_started_during_a_freeze_waits_for_the_thaw() {
    let root = MiniRoot::new();
    let cg = TestCgroup::new("late");
    let guard = cg.freeze_guard(Duration::from_secs(10)).expect("freeze");
    std::thread::scope(|s| {
        let late = s.spawn(|| output(&root.sh("echo ran"), &cg));
        std::thread::sleep(Duration::from_millis(300));
        // The child stopped the moment it joined, before bubblewrap's exec.
        assert!(!late.is_finished(), "a command ran inside a frozen machine");
        drop(guard);
        let out = late.join().expect("join");
        assert_eq!(stdout(&out), "ran\n");
    });
}
