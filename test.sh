#!/usr/bin/env bash
# Runs cairn's whole test suite on a fresh Debian machine, as root.
# Installs what the tests need first, so a clean clone passes without manual setup.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in build-essential pkg-config attr acl tar fuse3 bubblewrap uidmap; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # A FUSE view without root needs /dev/fuse open to every user. Debian's udev rules make it
  # 0666; a host without udev (a container, a minimal VM) may leave it 0600.
  if [ -c /dev/fuse ]; then chmod 0666 /dev/fuse; fi
  # The tests run machines without root as `nobody`, with subordinate ids as a login user has
  # them (`adduser` adds such a range on Debian); `daemon` has none.
  for f in /etc/subuid /etc/subgid; do
    grep -q '^nobody:' "$f" 2>/dev/null || echo 'nobody:1000000:65536' >> "$f"
  done
fi

# Trials of the crash harness (SIGKILL at random instants); CI runs at least 200.
export CAIRN_CRASH_TRIALS="${CAIRN_CRASH_TRIALS:-${CI:+240}}"
export CAIRN_CRASH_TRIALS="${CAIRN_CRASH_TRIALS:-60}"

cargo build --locked --workspace --all-targets
cargo test --locked --workspace -- --test-threads="${CAIRN_TEST_THREADS:-2}"
