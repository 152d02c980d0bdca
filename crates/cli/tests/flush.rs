//! A test of the `cairn` binary that watches the host's page cache, so it runs in a binary of
//! its own: cargo runs test binaries one after another, and any other test beside it (each
//! machine going down flushes the disk) would flush the data it watches.

// The shared helpers, of which this binary uses a few.
#[allow(dead_code, unused_imports)]
mod util;

use util::{Env, web_and_box};

/// Overlayfs flushes its upper's whole file system when it goes away, and whoever drops the
/// last reference waits for that. A restore leaves it to a background process that starts
/// once the command is done: a gigabyte of someone else's dirty data on the disk must still
/// be dirty when the restore returns, which took milliseconds. Other tests running beside
/// this one may flush the disk meanwhile, so an attempt whose data was flushed while the
/// restore ran proves nothing either way and is made again (tests of other crates' binaries
/// may run meanwhile); a restore that flushes fails every attempt.
#[test]
fn a_restore_does_not_wait_for_the_host_disk_to_flush() {
    let env = Env::new();
    let (t, at) = web_and_box(&env);
    env.cairn(["machine", "up", "box"]).ok();
    let dirty_mib = || {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap();
        info.lines()
            .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
            / 1024
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut seen = Vec::new();
    for attempt in 0..5 {
        std::fs::write(at.join("etc/hostname"), format!("changed {attempt}\n")).unwrap();
        env.cairn(["checkpoint", "create", "box"]).ok();
        // Dirty data on the same file system as the machine's upper, from no machine.
        rustix::fs::sync();
        let mut f = std::fs::File::create(env.path("dirty")).unwrap();
        for _ in 0..1024 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
        drop(f);
        let before = dirty_mib();
        let started = std::time::Instant::now();
        let r = env.cairn(["restore", "box@v1"]).json();
        let took = started.elapsed();
        let after = dirty_mib();
        assert!(
            r["phases"]
                .as_array()
                .expect("phases")
                .iter()
                .any(|p| p["name"] == "stop"),
            "the machine was up: {r}"
        );
        assert_eq!(
            std::fs::read(at.join("etc/hostname")).unwrap(),
            std::fs::read(t.root.join("etc/hostname")).unwrap()
        );
        std::fs::remove_file(env.path("dirty")).unwrap();
        seen.push((before, after, took, r["phases"].clone()));
        if before >= 768 && after >= 512 {
            env.cairn(["machine", "down", "box"]).ok();
            return;
        }
    }
    panic!(
        "every restore flushed the disk (dirty MiB before, after, the restore's time, phases): \
         {seen:?}"
    );
}
