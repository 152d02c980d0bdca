//! check: a clean repo has no findings; damage is reported with the checkpoints and paths it
//! affects.

use super::fixture::{TestDir, noise};
use super::*;
use crate::model::{BlobId, ChunkId};

fn check(repo: &Repo, read_data: bool) -> CheckReport {
    repo.check(&CheckOptions { read_data }, &NoProgress)
        .unwrap()
}

/// Machine `web` with `/etc/hostname` and a bigger file; v1 and v2 both hold the hostname.
fn setup(env: &Env) -> TestDir {
    let t = TestDir::new(&env.path("m"));
    t.dir(b"etc", 0o755)
        .file(b"etc/hostname", b"box\n", 0o644)
        .file(b"usr-big", &noise(200_000, 1), 0o644);
    adopt(&env.repo, "web", &t.root);
    checkpoint(&env.repo, "web");
    t.file(b"later", b"added in v2", 0o644);
    checkpoint(&env.repo, "web");
    t
}

fn pack_file(env: &Env, blob: &BlobId) -> (std::path::PathBuf, crate::catalog::BlobLoc) {
    let (loc, _) = env
        .repo
        .catalog
        .lookup_blob(blob)
        .unwrap()
        .expect("indexed");
    let hex = loc.pack.to_hex();
    let path = env
        .home()
        .join("store/packs")
        .join(&hex[..2])
        .join(format!("{hex}.pack"));
    assert!(path.exists(), "pack file at {}", path.display());
    (path, loc)
}

#[test]
fn clean_repo_has_no_findings() {
    let env = Env::new();
    setup(&env);
    for read_data in [false, true] {
        let rep = check(&env.repo, read_data);
        assert!(rep.ok(), "{:?}", rep.findings);
        assert_eq!(rep.checkpoints, 2);
        assert!(rep.trees >= 3 && rep.chunks >= 2, "{rep:?}");
        assert!(rep.packs >= 2, "{rep:?}");
        assert_eq!(rep.bytes_read > 0, read_data, "{rep:?}");
    }
}

#[test]
fn a_flipped_byte_is_found_by_read_data_and_traced_to_checkpoints_and_paths() {
    let env = Env::new();
    setup(&env);
    let blob = BlobId::from(ChunkId::of(b"box\n"));
    let (path, loc) = pack_file(&env, &blob);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (loc.offset + u64::from(loc.stored_len) / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    // Without reading data the damage may go unseen; either way nothing panics.
    let _ = check(&env.repo, false);
    let rep = check(&env.repo, true);
    let f = rep
        .findings
        .iter()
        .find(|f| f.object == format!("blob {}", blob.to_hex()))
        .unwrap_or_else(|| panic!("no finding names the damaged blob: {:?}", rep.findings));
    assert_eq!(f.checkpoints, ["web@v1", "web@v2"], "{f:?}");
    assert_eq!(f.paths, ["/etc/hostname"], "{f:?}");
    // Reading the damaged file fails loudly rather than returning wrong bytes.
    let mut out = Vec::new();
    assert!(env.repo.cat(&r("web@v1:/etc/hostname"), &mut out).is_err());
    assert!(out.is_empty(), "damaged data reached the reader");
}

#[test]
fn a_missing_pack_is_reported_with_checkpoints_and_paths() {
    let env = Env::new();
    setup(&env);
    let blob = BlobId::from(ChunkId::of(b"box\n"));
    let (path, _) = pack_file(&env, &blob);
    std::fs::remove_file(&path).unwrap();

    let rep = check(&env.repo, false);
    assert!(!rep.ok());
    let f = rep
        .findings
        .iter()
        .find(|f| f.object == format!("blob {}", blob.to_hex()))
        .unwrap_or_else(|| panic!("no finding names the lost blob: {:?}", rep.findings));
    assert!(f.problem.contains("missing"), "{f:?}");
    assert_eq!(f.checkpoints, ["web@v1", "web@v2"], "{f:?}");
    assert!(f.paths.contains(&"/etc/hostname".to_owned()), "{f:?}");
    // Every finding names at least one checkpoint and path.
    for f in &rep.findings {
        assert!(!f.checkpoints.is_empty() && !f.paths.is_empty(), "{f:?}");
    }
}

#[test]
fn a_lost_tree_is_reported_against_its_checkpoint() {
    let env = Env::new();
    setup(&env);
    // v2's trees are in their own pack (v2 added a file, so every tree above it changed).
    let v2 = env.repo.resolve(&r("web@v2")).unwrap().1;
    let (path, loc) = pack_file(&env, &BlobId::from(v2.root));
    assert_eq!(loc.kind, crate::store::BlobKind::Tree as u8);
    std::fs::remove_file(&path).unwrap();
    let rep = check(&env.repo, false);
    let f = rep
        .findings
        .iter()
        .find(|f| f.object == format!("blob {}", BlobId::from(v2.root).to_hex()))
        .unwrap_or_else(|| panic!("no finding names v2's root: {:?}", rep.findings));
    assert_eq!(f.checkpoints, ["web@v2"], "{f:?}");
}
