//! The command line as clap sees it: raw, unvalidated arguments and the help text that teaches
//! them. `config.rs` turns these into validated engine options before any work starts.

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

const SHORT_TOUR: &str = "\
A short tour:
  cairn machine create web --dir /srv/web     # track a directory in place
  cairn checkpoint create web --name clean    # save its state: web@v1
  # ... break things in /srv/web ...
  cairn diff web@clean                        # what changed since then
  cairn restore web@clean                     # put it back (undoable)
  cairn fork web@clean web-test --dir /srv/web-test

'cairn --help' says more; 'cairn COMMAND --help' explains each command with examples.";

const TOUR: &str = "\
A short tour:
  # Track a directory in place (nothing is copied)
  cairn machine create web --dir /srv/web

  # Save its state; prints the new checkpoint, e.g. web@v1
  cairn checkpoint create web --name clean -m \"before the upgrade\"

  # ... break things in /srv/web ...

  # What changed since the checkpoint?
  cairn diff web@clean

  # Put it back (the broken state is kept as an automatic checkpoint you can return to)
  cairn restore web@clean

  # Or start an independent copy from any checkpoint
  cairn fork web@v1 web-test --dir /srv/web-test

  # Mounted machines (as root): an overlay over a checkpoint; restore and fork copy nothing
  cairn machine create box --mounted --from web@clean
  cairn machine up box                        # appears at $CAIRN_HOME/machines/box/root
  cairn run box -- apt-get install -y nginx   # inside it, in its own namespaces
  cairn checkpoint create box                 # processes are frozen for the instant it needs
  cairn restore box@v1                        # re-points the lower layer: milliseconds
  cairn fork box@v2 a b c                     # three more machines, nothing copied

  # A read-only view of any checkpoint
  cairn mount web@v1 /mnt/old

References:
  MACHINE@vN, MACHINE@NAME or MACHINE@latest select a checkpoint; append :/PATH to select a
  path inside it, e.g. web@v2:/etc/hosts.

Exit status:
  0 success; 1 the operation failed (or `check` found problems); 2 the command line was wrong
  (unknown option, bad reference, bad name or duration): nothing was done. `run` and `shell`
  exit with the code of the command they ran.

Environment:
  CAIRN_HOME    where checkpoints are stored (same as --home)
  CAIRN_AUTHOR  who is acting (same as --author)
  CAIRN_LOG     diagnostics on stderr, e.g. CAIRN_LOG=debug (default: warnings only)";

/// `cairn`: git-like checkpoints for Linux machines.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Git-like checkpoints for Linux machines: save, diff, restore and fork directories",
    long_about = "Git-like checkpoints for Linux machines.\n\n\
        A machine is a directory (a container root filesystem, a project, a folder of VM disk \
        images) that cairn tracks in place, or a mounted machine: an overlay over a checkpoint \
        whose restore and fork move no data. A checkpoint saves its whole state in moments; any \
        checkpoint can be restored in place without losing newer ones, or forked into new \
        machines. Data is deduplicated across every checkpoint and machine.",
    after_help = SHORT_TOUR,
    after_long_help = TOUR,
    propagate_version = true,
    arg_required_else_help = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Flags accepted by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print exactly one JSON document on stdout (errors too: {"error": "..."})
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Where checkpoints are stored [default: $XDG_DATA_HOME/cairn or ~/.local/share/cairn]
    #[arg(
        long,
        global = true,
        env = "CAIRN_HOME",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub home: Option<PathBuf>,

    /// Who is acting, recorded on checkpoints and in the audit log [default: your login name]
    #[arg(
        long,
        global = true,
        env = "CAIRN_AUTHOR",
        value_name = "NAME",
        help_heading = "Global options"
    )]
    pub author: Option<String>,

    /// How long to wait for another command that holds the machine's lock
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        default_value = "30",
        help_heading = "Global options"
    )]
    pub wait: String,

    /// Print only results: no progress, summaries or hints
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create, list, show and remove machines
    #[command(subcommand)]
    Machine(Deferred<MachineCmd>),

    /// Create, list, show and delete checkpoints
    #[command(subcommand)]
    Checkpoint(Deferred<CheckpointCmd>),

    /// Show what changed between two checkpoints, or between a checkpoint and the live directory
    #[command(
        long_about = "Show what changed between two checkpoints, or, with one reference, between \
            that checkpoint and the machine's live directory.\n\n\
            Each line is `A PATH` (added), `D PATH` (deleted) or `M PATH (what)` (modified, with \
            the aspects that changed: content, mode, owner, mtime, xattrs, type, target, rdev, \
            links). A path after the reference limits the diff to that subtree. Unusual bytes in \
            paths are shown escaped, so each change is one line.",
        after_help = "Examples:\n  cairn diff web@clean            # since `clean`, against the live directory\n  cairn diff web@v1 web@v3\n  cairn diff web@v1:/etc web@latest"
    )]
    Diff {
        /// The older side: MACHINE@REF[:/PATH]
        #[arg(value_name = "REF")]
        from: OsString,
        /// The newer side [default: the machine's live directory]
        #[arg(value_name = "REF")]
        to: Option<OsString>,
    },

    /// Restore a machine's directory in place to a checkpoint (or one path of it)
    #[command(
        long_about = "Restore a machine's directory in place to a checkpoint, or only the path \
            given after `:` or with --path.\n\n\
            Nothing is lost: the live state is first saved as an automatic checkpoint, printed as \
            `undo with: cairn restore MACHINE@vN`. Only entries that differ are rewritten.\n\n\
            A mounted machine restored whole is re-pointed at the checkpoint: nothing is copied, \
            and a machine that is up is stopped and started again. One path of it is restored \
            like a directory machine's, through its overlay, while its processes keep running; \
            a machine that is down is brought up for that and down again after.",
        after_help = "Examples:\n  cairn restore web@clean\n  cairn restore web@v2:/etc/nginx\n  cairn restore web@v2 --path /etc/nginx\n  cairn restore box@v1:/etc"
    )]
    Restore {
        /// The checkpoint to return to: MACHINE@REF[:/PATH]
        #[arg(value_name = "REF")]
        target: OsString,
        /// Restore only this path inside the machine (same as REF:/PATH)
        #[arg(long, value_name = "PATH")]
        path: Option<OsString>,
    },

    /// Create new machines from a checkpoint: mounted ones (instant), or one in a new directory
    #[command(
        long_about = "Create new, independent machines from a checkpoint.\n\n\
            Without --dir, each NAME becomes a mounted machine whose lower layer is the \
            checkpoint's tree and whose upper layer starts empty: nothing is copied, so a fork \
            takes milliseconds whatever the machine's size. Bring one up with `cairn machine up`.\n\n\
            With --dir, the checkpoint is written into DIR (new or empty) as a directory machine.\n\n\
            Either way the checkpoint becomes the new machine's v1.",
        after_help = "Examples:\n  cairn fork box@v2 a b c                       # three mounted machines\n  cairn fork web@clean web-test --dir /srv/web-test"
    )]
    Fork {
        /// The checkpoint to start from: MACHINE@REF
        #[arg(value_name = "REF")]
        source: OsString,
        /// The new machines' names
        #[arg(value_name = "NEW_NAME", required = true)]
        names: Vec<String>,
        /// Write the checkpoint into this directory (new or empty) as one directory machine
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },

    /// Run a command inside a machine, in its own namespaces
    #[command(
        long_about = "Run a command inside a machine: the machine's directory is its `/`, with \
            its own pid, mount, ipc and uts namespaces and a fresh /proc and /dev; nothing of \
            the host is visible except what --bind adds. A mounted machine that is down is \
            brought up first. The command's processes are frozen for the instant a checkpoint \
            reads the machine, and stopped by `machine down` and `restore`. cairn exits with the \
            command's exit code.",
        after_help = "Examples:\n  cairn run box -- apt-get install -y nginx\n  cairn run box --bind /srv/data:/data:ro -- ls /data"
    )]
    Run {
        /// The machine
        #[arg(value_name = "MACHINE")]
        machine: String,
        /// Make a host path visible inside: HOST:GUEST, or HOST:GUEST:ro for read-only
        #[arg(long = "bind", value_name = "HOST:GUEST[:ro]")]
        binds: Vec<OsString>,
        /// The command and its arguments, after `--`
        #[arg(value_name = "COMMAND", last = true, required = true)]
        command: Vec<OsString>,
    },

    /// Open an interactive shell inside a machine
    #[command(
        long_about = "Open an interactive login shell inside the machine (its /bin/bash, else \
            /bin/sh), in the same namespaces as `cairn run`.",
        after_help = "Example:\n  cairn shell box"
    )]
    Shell {
        /// The machine
        #[arg(value_name = "MACHINE")]
        machine: String,
        /// Make a host path visible inside: HOST:GUEST, or HOST:GUEST:ro for read-only
        #[arg(long = "bind", value_name = "HOST:GUEST[:ro]")]
        binds: Vec<OsString>,
    },

    /// Write one file of a checkpoint to stdout
    #[command(
        long_about = "Write the content of one regular file of a checkpoint to stdout, byte for \
            byte (holes in sparse files come out as zeros).",
        after_help = "Example:\n  cairn cat web@v2:/etc/hosts | diff - /srv/web/etc/hosts"
    )]
    Cat {
        /// The file: MACHINE@REF:/PATH
        #[arg(value_name = "REF:/PATH")]
        source: OsString,
    },

    /// Export a checkpoint (or a directory of it) as a PAX tar archive
    #[command(
        long_about = "Export a checkpoint, or the directory given after `:`, as a PAX tar archive \
            with full metadata (owners, modes, times, xattrs, hardlinks, devices). Progress goes \
            to stderr.",
        after_help = "Examples:\n  cairn export web@v2 -o web-v2.tar\n  cairn export web@v2:/etc -o - | tar -t"
    )]
    Export {
        /// The checkpoint: MACHINE@REF[:/DIR]
        #[arg(value_name = "REF")]
        source: OsString,
        /// Where to write the archive; `-` is stdout
        #[arg(short, long, value_name = "FILE")]
        output: OsString,
    },

    /// Mount a checkpoint (or a directory of it) read-only at an empty directory
    #[command(
        long_about = "Mount a checkpoint, or the directory given after `:`, read-only at \
            MOUNTPOINT (an existing, empty directory), served straight from the store: nothing \
            is copied and nothing is written. Everything reads as it was when the checkpoint \
            was taken: modes (setuid, setgid, sticky), owners, nanosecond mtimes, symlinks, \
            devices, fifos, sparse files, hardlinks (one inode number per file) and xattrs \
            (capabilities and POSIX ACLs too, which the kernel enforces).\n\n\
            By default cairn stays in the foreground and serves until Ctrl-C, SIGTERM or \
            `cairn umount MOUNTPOINT`. With --background it returns once the mount is live and \
            prints the server's pid. Device nodes cannot be opened and setuid bits grant \
            nothing through the view. Needs /dev/fuse, and fusermount3 (package fuse3) when \
            not run as root.",
        after_help = "Examples:\n  cairn mount web@v1 /mnt/web              # until Ctrl-C\n  cairn mount web@clean:/etc /mnt/etc --background\n  diff -r /mnt/web/etc /srv/web/etc\n  cairn umount /mnt/web"
    )]
    Mount {
        /// What to mount: MACHINE@REF[:/DIR]
        #[arg(value_name = "REF")]
        source: OsString,
        /// An existing, empty directory
        #[arg(value_name = "MOUNTPOINT")]
        mountpoint: PathBuf,
        /// Return once the mount is live, serving from a background process
        #[arg(long)]
        background: bool,
        /// Internal: the background server started by --background
        #[arg(long, hide = true)]
        serve_background: bool,
    },

    /// Unmount a view made by `cairn mount`
    #[command(
        long_about = "Unmount a view made by `cairn mount`, which stops its server. A view whose \
            server was killed (every access fails with \"Transport endpoint is not connected\") \
            is cleaned up too. A view in use (a shell's cwd, an open file) is refused unless \
            --lazy is given, which detaches it now and releases it when the last user leaves.",
        after_help = "Examples:\n  cairn umount /mnt/web\n  cairn umount --lazy /mnt/web"
    )]
    Umount {
        /// Where the view is mounted
        #[arg(value_name = "MOUNTPOINT")]
        mountpoint: PathBuf,
        /// Detach now even if it is in use; it is released when the last user leaves
        #[arg(long)]
        lazy: bool,
    },

    /// Show the space used per machine and checkpoint
    #[command(
        long_about = "Show the space used per machine and checkpoint: logical bytes (the size \
            of the files), stored bytes (compressed, counting shared data in full) and exclusive \
            bytes (what deleting it and running `cairn gc` would free).",
        after_help = "Example:\n  cairn du"
    )]
    Du,

    /// Free the space of deleted checkpoints
    #[command(
        long_about = "Free the space of deleted checkpoints. Unreferenced data is first marked, \
            and deleted by a later gc once the grace period has passed, so a checkpoint running \
            at the same time is never harmed. Packs mostly unreferenced are rewritten.\n\n\
            Mounted machines of root keep a lower image of each tree they have stood on (a \
            cache that lets a restore or fork come up without a view). gc keeps those of \
            machines' current bases, and the others within --images-max, least recently used \
            first.",
        after_help = "Examples:\n  cairn gc\n  cairn gc --grace 0s          # nothing else is running: free it now\n  cairn gc --images-max 500M\n  cairn gc --dry-run"
    )]
    Gc {
        /// How long unreferenced data stays marked before it is deleted, e.g. 0s, 10m, 1h, 2d
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        grace: String,
        /// The most lower images may take on disk, e.g. 0, 500M, 2G (bytes; K, M, G, T are
        /// powers of 1024)
        #[arg(long, value_name = "SIZE", default_value = "2G")]
        images_max: String,
        /// Rewrite packs whose live fraction is below this (0 to 1)
        #[arg(long, value_name = "FRACTION", default_value = "0.5")]
        repack_below: String,
        /// Only report what would be done
        #[arg(long)]
        dry_run: bool,
    },

    /// Verify the store: every checkpoint's trees and data are present and intact
    #[command(
        long_about = "Verify that every checkpoint's trees and data are present and consistent. \
            With --read-data, every pack is read and every chunk re-hashed as well, and so is \
            every copy in the data layer (the local copies root's machines read their base's \
            files from); a copy that differs from its file is removed, and its machines read \
            the file through their view until it is copied again. Exits 1 when a problem is \
            found, naming the affected checkpoints and paths.\n\n\
            A damaged catalog is reported with the checkpoints it hides; --repair rebuilds it from \
            the store (every pack carries its index, every checkpoint a manifest) and keeps the \
            damaged file beside it, then checks the result.",
        after_help = "Examples:\n  cairn check\n  cairn check --read-data\n  cairn check --repair"
    )]
    Check {
        /// Read and re-hash all data, not just the structure
        #[arg(long)]
        read_data: bool,
        /// Rebuild a damaged catalog from the store first
        #[arg(long)]
        repair: bool,
    },

    /// List a machine's checkpoints, or with --audit the audit log
    #[command(
        long_about = "Without --audit, `cairn log MACHINE` lists the machine's checkpoints (as \
            `cairn checkpoint list`). With --audit, show the audit log of every operation, of \
            all machines or of one.",
        after_help = "Examples:\n  cairn log web\n  cairn log --audit\n  cairn log --audit web --limit 20"
    )]
    Log {
        /// Show the audit log instead of checkpoints
        #[arg(long)]
        audit: bool,
        /// The machine (optional with --audit)
        #[arg(value_name = "MACHINE")]
        machine: Option<String>,
        /// Show only the newest N entries
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

/// A group of subcommands that clap builds only when the command line enters the group, or
/// help needs it: every command is a short process, and building the whole command tree on
/// each start cost more than parsing.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: Subcommand> Subcommand for Deferred<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_subcommands)
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_subcommands_for_update)
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Track a directory as a machine, import a tar archive, or make a mounted machine
    #[command(
        long_about = "Create a machine.\n\n\
            A directory machine (--dir) is a directory cairn tracks in place. Without \
            --from-tar the directory is adopted: nothing is copied, and no checkpoint exists \
            until you create one. With --from-tar a plain tar archive is unpacked into DIR (new \
            or empty) and checkpoint v1 is taken of it.\n\n\
            A mounted machine (--mounted) is an overlay: a read-only view of a checkpoint \
            below, and a local directory above that takes every write at native speed. \
            Restore and fork then move no data. It starts from --from (a checkpoint of any \
            machine, instantly), --from-tar, or empty, and appears at --at (default \
            $CAIRN_HOME/machines/NAME/root) while it is up: see `cairn machine up`.",
        after_help = "Examples:\n  cairn machine create web --dir /srv/web\n  cairn machine create base --dir /srv/base --from-tar rootfs.tar\n  cairn machine create box --mounted --from-tar rootfs.tar\n  cairn machine create box2 --mounted --from web@v2\n  cairn machine create scratch --mounted"
    )]
    Create {
        /// The machine's name: letters, digits, `.`, `_`, `-`
        #[arg(value_name = "NAME")]
        name: String,
        /// The machine's directory (a directory machine)
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "mounted",
            conflicts_with = "mounted"
        )]
        dir: Option<PathBuf>,
        /// Unpack this plain tar archive first
        #[arg(long, value_name = "FILE")]
        from_tar: Option<PathBuf>,
        /// Make a mounted machine (an overlay over a checkpoint's tree)
        #[arg(long)]
        mounted: bool,
        /// A mounted machine's starting checkpoint: MACHINE@REF
        #[arg(
            long,
            value_name = "REF",
            requires = "mounted",
            conflicts_with = "from_tar"
        )]
        from: Option<OsString>,
        /// Start a mounted machine empty (the default without --from or --from-tar)
        #[arg(long, requires = "mounted", conflicts_with_all = ["from", "from_tar"])]
        empty: bool,
        /// Where a mounted machine appears while up [default: $CAIRN_HOME/machines/NAME/root]
        #[arg(long, value_name = "PATH", requires = "mounted")]
        at: Option<PathBuf>,
    },

    /// Mount a mounted machine: its checkpoint view below, its own layer above
    #[command(
        long_about = "Bring a mounted machine up: serve the view of its base checkpoint and mount \
            the overlay at the machine's path. A view or overlay left behind by a crash is \
            detached first, and reported; nothing written to the machine is lost.",
        after_help = "Example:\n  cairn machine up box && ls $CAIRN_HOME/machines/box/root"
    )]
    Up {
        /// The mounted machine
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Unmount a mounted machine; its changes stay in its layer for the next `up`
    #[command(after_help = "Example:\n  cairn machine down box")]
    Down {
        /// The mounted machine
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Serve a mounted machine's base view until it is unmounted (started by `machine up`)
    #[command(
        hide = true,
        after_help = "Started by `cairn machine up NAME`; not meant to be run by hand."
    )]
    ServeLower {
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Hold a mounted machine's overlay in a user namespace (started by `machine up` without root)
    #[command(
        hide = true,
        after_help = "Started by `cairn machine up NAME` when not run as root; not meant to be \
            run by hand."
    )]
    HoldOverlay {
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Read a mounted machine's upper layer in a user namespace (started by a checkpoint without root)
    #[command(
        hide = true,
        after_help = "Started by `cairn checkpoint create NAME` when not run as root; not meant \
            to be run by hand."
    )]
    IngestUpper {
        #[arg(value_name = "NAME")]
        name: String,
        /// Store nothing; hand the trees back (a diff against the live machine)
        #[arg(long)]
        dry: bool,
    },

    /// Remove a machine's old upper layers in its user namespace (started without root)
    #[command(
        hide = true,
        after_help = "Started by cairn when not run as root; not meant to be run by hand."
    )]
    SweepState {
        /// The machine's uid (its state directory's name)
        #[arg(value_name = "UID")]
        uid: String,
        /// The whole state directory, of a machine being removed
        #[arg(long)]
        all: bool,
    },

    /// List the machines
    #[command(visible_alias = "ls", after_help = "Example:\n  cairn machine list")]
    List,

    /// Show one machine
    #[command(after_help = "Example:\n  cairn machine show web")]
    Show {
        /// The machine to show
        #[arg(value_name = "NAME")]
        name: String,
    },

    /// Forget a machine and its checkpoints; its directory is left alone
    #[command(
        visible_alias = "remove",
        long_about = "Forget a machine and its checkpoints. Its directory and the files in it \
            are left alone. The space of its checkpoints is freed by `cairn gc`.",
        after_help = "Example:\n  cairn machine rm web-test"
    )]
    Rm {
        /// The machine to forget
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCmd {
    /// Save the machine's current state as a new checkpoint
    #[command(
        long_about = "Save the machine's current state as a new checkpoint. Only files whose \
            size, times or inode changed are read. Prints the new checkpoint (e.g. web@v3) on \
            stdout and a one-line summary on stderr.",
        after_help = "Examples:\n  cairn checkpoint create web\n  cairn checkpoint create web --name clean -m \"fresh install\""
    )]
    Create {
        /// The machine to checkpoint
        #[arg(value_name = "MACHINE")]
        machine: String,
        /// A name to refer to it by (MACHINE@NAME)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// A note describing it
        #[arg(short = 'm', long = "message", value_name = "NOTE")]
        note: Option<String>,
    },

    /// List a machine's checkpoints with their sizes
    #[command(
        visible_alias = "ls",
        long_about = "List a machine's checkpoints, oldest first, with logical, stored and \
            exclusive size. Checkpoints cairn made itself (the undo point of a restore) are \
            marked (auto).",
        after_help = "Example:\n  cairn checkpoint list web"
    )]
    List {
        /// The machine whose checkpoints to list
        #[arg(value_name = "MACHINE")]
        machine: String,
    },

    /// Show one checkpoint
    #[command(after_help = "Example:\n  cairn checkpoint show web@latest")]
    Show {
        /// The checkpoint: MACHINE@vN, MACHINE@NAME or MACHINE@latest
        #[arg(value_name = "REF")]
        reference: OsString,
    },

    /// Delete one checkpoint (its space is freed by `cairn gc`)
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  cairn checkpoint delete web@v2"
    )]
    Delete {
        /// The checkpoint to delete: MACHINE@vN or MACHINE@NAME
        #[arg(value_name = "REF")]
        reference: OsString,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_about_and_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            // Built, each group also has clap's own `help` subcommand: not ours to document.
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{name} has no about line");
                if sub.has_subcommands() {
                    walk(sub, &name);
                } else {
                    let after = sub
                        .get_after_help()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    assert!(after.contains("cairn "), "{name} has no example");
                }
            }
        }
        // Groups build their subcommands only when entered (`Deferred`): build them all.
        let mut cli = Cli::command();
        cli.build();
        let groups =
            |c: &clap::Command| c.get_subcommands().filter(|s| s.has_subcommands()).count();
        assert!(
            groups(&cli) >= 3,
            "machine, checkpoint and help have subcommands once built"
        );
        walk(&cli, "cairn");
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "cairn",
            "checkpoint",
            "create",
            "web",
            "--json",
            "-q",
            "--wait",
            "5",
        ])
        .unwrap();
        assert!(cli.global.json && cli.global.quiet);
        assert_eq!(cli.global.wait, "5");
        let cli = Cli::try_parse_from(["cairn", "--json", "du"]).unwrap();
        assert!(cli.global.json);
    }

    #[test]
    fn usage_errors_exit_2() {
        for argv in [
            &["cairn", "bogus"][..],
            &["cairn", "machine", "create", "web"],
            &["cairn", "export", "web@v1"],
            &["cairn", "du", "--nope"],
        ] {
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "cairn",
            "checkpoint",
            "create",
            "web",
            "--name",
            "clean",
            "-m",
            "x",
        ])
        .unwrap();
        match cli.command {
            Cmd::Checkpoint(Deferred(CheckpointCmd::Create {
                machine,
                name,
                note,
            })) => {
                assert_eq!(
                    (machine.as_str(), name.as_deref(), note.as_deref()),
                    ("web", Some("clean"), Some("x"))
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["cairn", "log", "--audit", "web", "--limit", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Log {
                audit: true,
                limit: Some(3),
                ..
            }
        ));
    }
}
