# The exact commands each tool runs in each step; bench.py sources this file and times one
# function at a time. BENCHMARKS.md quotes these functions verbatim.
#
# Every function sees: W (the machine directory, tracked in place), R (the tool's repository;
# its size is the "stored" column), F (the fork's directory), C (the tool's local cache, not
# counted as stored). TOOL_init runs untimed; TOOL_save L, TOOL_restore L and TOOL_fork L are
# timed. L is the step's label (s1, s2, s3).
set -euo pipefail

# Empties the directory but keeps it (its own metadata is restored by the tool).
wipe() { find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf {} +; }

# cairn: the directory is a machine tracked in place; restore rewrites only what differs.
export CAIRN_HOME="$R"
cairn_init()    { cairn -q machine create m --dir "$W"; }
cairn_save()    { cairn -q checkpoint create m --name "$1"; }
cairn_restore() { cairn -q restore "m@$1"; }
cairn_fork()    { cairn -q fork "m@$1" fork --dir "$F"; }

# restic: no encryption is possible, so a fixed password; repository format 2 with its
# default compression (auto). Bookworm's restic 0.14 has no `restore --delete`, so an
# in-place restore empties the directory first.
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$C"
restic_init()    { restic -q -r "$R" init; }
restic_save()    { (cd "$W" && restic -q -r "$R" backup --host bench --tag "$1" .); }
restic_restore() { wipe "$W"; restic -q -r "$R" restore latest --host bench --tag "$1" --target "$W"; }
restic_fork()    { restic -q -r "$R" restore latest --host bench --tag "$1" --target "$F"; }

# borg: --encryption=none, default compression (lz4). extract writes into the current
# directory and leaves extras alone, so an in-place restore empties the directory first.
export BORG_BASE_DIR="$C" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
borg_init()    { borg init --encryption=none "$R"; }
borg_save()    { (cd "$W" && borg create "$R::$1" .); }
borg_restore() { wipe "$W"; (cd "$W" && borg extract "$R::$1"); }
borg_fork()    { mkdir -p "$F" && (cd "$F" && borg extract "$R::$1"); }

# casync: default feature set and compression (zstd). extract into an existing directory
# deletes extras (--delete=yes). Its default of seeding from the files already there fails
# in place with "Stale file handle" in this version, hence --seed-output=no.
casync_init()    { mkdir -p "$R"; }
casync_save()    { casync make --store="$R/default.castr" "$R/$1.caidx" "$W"; }
casync_restore() { casync extract --seed-output=no --store="$R/default.castr" "$R/$1.caidx" "$W"; }
casync_fork()    { casync extract --store="$R/default.castr" "$R/$1.caidx" "$F"; }

# ostree: a bare repository (its default mode: uncompressed, keeps ownership and xattrs).
# Checkouts copy (--force-copy): a hardlinked checkout would share inodes with the
# repository. In-place restore = checkout beside the directory, then swap.
ostree_init()    { ostree --repo="$R" init --mode=bare; }
ostree_save()    { ostree --repo="$R" commit --branch="$1" --tree=dir="$W" >/dev/null; }
ostree_restore() {
  ostree --repo="$R" checkout --force-copy "$1" "$W.new"
  rm -rf "$W" && mv "$W.new" "$W"
}
ostree_fork()    { ostree --repo="$R" checkout --force-copy "$1" "$F"; }

# tar + gzip: one full archive per checkpoint (no incremental mode); restore = empty + extract.
TAR_OPTS=(--format=posix --xattrs --xattrs-include='*' --acls --numeric-owner)
tar_init()    { mkdir -p "$R"; }
tar_save()    { tar -C "$W" "${TAR_OPTS[@]}" -czf "$R/$1.tar.gz" .; }
tar_restore() { wipe "$W"; tar -C "$W" "${TAR_OPTS[@]}" -xpzf "$R/$1.tar.gz"; }
tar_fork()    { mkdir -p "$F" && tar -C "$F" "${TAR_OPTS[@]}" -xpzf "$R/$1.tar.gz"; }

# cp -a: the reference for S6 only; it copies a directory already in the S2 state (SRC).
cp_fork()     { cp -a "$SRC" "$F"; }
