//! Times the sandbox's hot paths on this host (as root): freeze+thaw of a machine cgroup with
//! one and with fifty processes, and a bubblewrap start-to-exit of `true`. Medians of 20.
//!
//! cargo run --release -p cairn-core --example sandbox_timings

use cairn_core::{Cgroup, RunOptions, sandboxed_command, spawn_sandboxed};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    build_root(root.path())?;
    let cg = Cgroup::open_or_create(&format!("timings-{}", std::process::id()))?;
    let sh = |script: &str| RunOptions::new(root.path(), "timings", ["/bin/sh", "-c", script]);

    for (label, script, procs) in [
        ("1 sleeping process", "exec sleep 1000", 1),
        ("1 busy process", "while :; do :; done", 1),
        (
            "50 sleeping processes",
            "i=0; while [ $i -lt 50 ]; do sleep 1000 & i=$((i+1)); done; wait",
            50,
        ),
    ] {
        let mut child = spawn_sandboxed(&sh(script), Some(&cg))?;
        // bwrap, its reaper, and the command's processes.
        while cg.pids()?.len() < procs + 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (mut freeze, mut both) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let start = Instant::now();
            freeze.push(cg.freeze(Duration::from_secs(10))?);
            cg.thaw()?;
            both.push(start.elapsed());
        }
        println!(
            "{label:>22}: freeze {:>9.3?}  freeze+thaw {:>9.3?}  ({} pids in the cgroup)",
            median(freeze),
            median(both),
            cg.pids()?.len()
        );
        cg.kill_all(Duration::from_secs(10))?;
        child.wait()?;
    }

    let mut runs = Vec::new();
    for _ in 0..ROUNDS {
        let mut cmd =
            sandboxed_command(&RunOptions::new(root.path(), "t", ["/bin/true"]), Some(&cg))?;
        let start = Instant::now();
        let status = cmd.stdin(Stdio::null()).status()?;
        runs.push(start.elapsed());
        assert!(status.success());
    }
    println!("{:>22}: {:>9.3?}", "bwrap true, start-exit", median(runs));
    cg.kill_all(Duration::from_secs(10))?;
    cg.remove()?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// sh, sleep and true from the host with the libraries `ldd` names.
fn build_root(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("bin"))?;
    for name in ["sh", "sleep", "true"] {
        let host = std::fs::canonicalize(Path::new("/bin").join(name))?;
        std::fs::copy(&host, root.join("bin").join(name))?;
        let ldd = Command::new("ldd").arg(&host).output()?;
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dest = root.join(&lib[1..]);
            std::fs::create_dir_all(dest.parent().unwrap_or(root))?;
            std::fs::copy(lib, dest)?;
        }
    }
    Ok(())
}
