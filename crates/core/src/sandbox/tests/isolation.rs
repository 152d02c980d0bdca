//! "A machine's processes cannot reach the host filesystem outside the machine except through
//! what the user binds explicitly."

use super::*;
use crate::sandbox::Bind;

/// A host directory outside the machine root holding `secret`.
fn host_secret() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    fs::write(&secret, "host data\n").expect("write secret");
    (dir, secret)
}

#[test]
fn host_files_outside_the_root_are_invisible() {
    let root = MiniRoot::new();
    fs::write(root.path().join("inside"), "machine data\n").expect("write");
    let (_dir, secret) = host_secret();
    let cg = TestCgroup::new("invisible");
    let s = secret.display();
    let script = format!(
        "cat {s} 2>/dev/null && echo LEAK-direct; \
         cat /proc/1/root{s} 2>/dev/null && echo LEAK-proc1; \
         cat /../../..{s} 2>/dev/null && echo LEAK-dotdot; \
         cd / && cd .. && cd .. && readlink /proc/self/cwd; \
         cat /proc/1/root/inside; ls /proc/1/root/; ls /"
    );
    let out = output(&root.sh(&script), &cg);
    let text = stdout(&out);
    assert!(!text.contains("LEAK"), "{text}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("/"), "`..` from / stays in /: {text}");
    assert_eq!(
        lines.next(),
        Some("machine data"),
        "/proc/1/root is the machine"
    );
    // Both listings show the machine's own top level, nothing of the host's.
    let listing: Vec<&str> = lines.collect();
    let expected = ["bin", "dev", "inside", "lib", "lib64", "proc", "tmp"];
    for name in expected {
        assert_eq!(listing.iter().filter(|l| **l == name).count(), 2, "{text}");
    }
    assert!(
        !listing.contains(&"work") && !listing.contains(&"etc"),
        "{text}"
    );
}

#[test]
fn explicit_binds_are_visible_and_read_only_ones_unwritable() {
    let root = MiniRoot::new();
    let (dir, _secret) = host_secret();
    let rw = tempfile::tempdir().expect("tempdir");
    let cg = TestCgroup::new("binds");
    let mut opts = root.sh(
        "cat /shared/secret; echo x > /shared/new 2>/dev/null && echo WROTE-ro; \
         echo made > /scratch/file && echo wrote-rw",
    );
    opts.binds = vec![
        Bind {
            host: dir.path().to_owned(),
            guest: "/shared".into(),
            read_only: true,
        },
        Bind {
            host: rw.path().to_owned(),
            guest: "/scratch".into(),
            read_only: false,
        },
    ];
    let out = output(&opts, &cg);
    assert_eq!(stdout(&out), "host data\nwrote-rw\n", "{out:?}");
    assert!(!dir.path().join("new").exists());
    assert_eq!(
        fs::read_to_string(rw.path().join("file")).expect("read"),
        "made\n"
    );
}

#[test]
fn kernel_tunables_and_devices_cannot_be_used_to_escape() {
    let root = MiniRoot::new();
    // A device node inside the machine (a tar import can bring one) must not open the host's
    // device: the root is mounted nodev. /dev/null here is 1:3, the same node as the host's.
    let node = std::ffi::CString::new(
        root.path()
            .join("null")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path");
    // SAFETY: mknod on a valid C string path.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    // On the host the node works, so the refusal inside is the sandbox's doing.
    fs::write(root.path().join("null"), "x").expect("the host can use the node");
    let cg = TestCgroup::new("escape");
    let out = output(
        &root.sh(
            "[ -w /proc/sys/kernel/core_pattern ] && echo WRITABLE-sysctl; \
             echo x > /null 2>/dev/null && echo OPENED-node; \
             echo x > /dev/null && echo dev-null-works; \
             cat /proc/self/status",
        ),
        &cg,
    );
    let text = stdout(&out);
    assert!(
        !text.contains("WRITABLE") && !text.contains("OPENED"),
        "{text}"
    );
    assert!(text.contains("dev-null-works"), "{text}");
    let cap_eff = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff line");
    // Bit numbers from linux/capability.h.
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    assert!(
        has(0) && has(1),
        "CAP_CHOWN and CAP_DAC_OVERRIDE kept: {cap_eff:x}"
    );
    for (name, bit) in [
        ("CAP_DAC_READ_SEARCH", 2),
        ("CAP_SETPCAP", 8),
        ("CAP_NET_ADMIN", 12),
        ("CAP_SYS_MODULE", 16),
        ("CAP_SYS_PTRACE", 19),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_MKNOD", 27),
    ] {
        assert!(!has(bit), "{name} kept: {cap_eff:x}");
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
}
