#!/usr/bin/env python3
"""Keeps a cached cargo target directory from growing without bound.

    prune_cache.py [--keep N] TARGET_DIR MANIFEST...

Cargo names every build of a workspace crate by a hash of where and how it was
built: each clone in another directory, each change of Cargo.lock or of
RUSTFLAGS leaves a full new set of the workspace's libraries, test and bench
binaries, fingerprints and incremental state beside the old ones, which nothing
ever reads again (one set of the fuzz targets is 0.8 GiB). For every crate of
the workspaces that MANIFEST (a Cargo.toml) names, this keeps what the N
(default 2) most recent builds of it wrote in each deps/, incremental/,
.fingerprint/ and build/ directory of TARGET_DIR and deletes the rest. One
build can write several hashes of one name (a test and a bench both called
`admission`, a library's unit tests beside the library): hashes written within
an hour of each other count as one build. Dependencies are left alone:
they are shared by every build, and their stale versions are few.

Prints what it freed; never fails the build it runs before (a directory it
cannot read or delete is reported and skipped).
"""

import json
import os
import re
import shutil
import subprocess
import sys

ARTIFACT_DIRS = ("deps", "incremental", ".fingerprint", "build")
# deps/ and build/ hashes are 16 hex digits, incremental/'s 13 base-32 ones.
HASHED = re.compile(r"^(?P<stem>.+?)-(?P<hash>[0-9a-z]{10,20})(?:\..*)?$")
# Hashes of one name written this close together come from one build.
ONE_BUILD_SECONDS = 3600


def workspace_names(manifest):
    """Every package and target name of MANIFEST's workspace, as cargo spells
    them in file names (packages with '-', crates with '_')."""
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1",
         "--manifest-path", manifest],
        check=True, capture_output=True, text=True).stdout
    names = set()
    for package in json.loads(out)["packages"]:
        names.add(package["name"])
        for target in package["targets"]:
            names.add(target["name"])
    return names | {name.replace("-", "_") for name in names}


def artifact_dirs(target_dir):
    """TARGET_DIR/PROFILE/X and TARGET_DIR/TRIPLE/PROFILE/X for X in ARTIFACT_DIRS."""
    for root, dirs, _files in os.walk(target_dir):
        depth = os.path.relpath(root, target_dir).count(os.sep)
        if os.path.basename(root) in ARTIFACT_DIRS:
            yield root
            dirs.clear()
        elif depth >= 2:
            dirs.clear()


def stale_entries(directory, names, keep):
    """The entries of DIRECTORY built for a workspace crate by other than its
    KEEP most recent builds."""
    builds = {}  # stem -> hash -> (newest mtime, [paths])
    for entry in os.scandir(directory):
        match = HASHED.match(entry.name)
        if not match:
            continue
        stem = match["stem"]
        if stem.removeprefix("lib") not in names and stem not in names:
            continue
        mtime = entry.stat(follow_symlinks=False).st_mtime
        newest, paths = builds.setdefault(stem, {}).get(match["hash"], (0.0, []))
        builds[stem][match["hash"]] = (max(newest, mtime), paths + [entry.path])
    for hashes in builds.values():
        yield from older_builds(sorted(hashes.values(), reverse=True), keep)


def older_builds(newest_first, keep):
    """The paths of NEWEST_FIRST ((mtime, paths) of each hash, newest first)
    that came before the KEEP most recent builds."""
    build, start = 0, None
    for mtime, paths in newest_first:
        if start is not None and mtime < start - ONE_BUILD_SECONDS:
            build += 1
            start = None
        if start is None:
            start = mtime
        if build >= keep:
            yield from paths


def size_of(path):
    if os.path.isdir(path) and not os.path.islink(path):
        return sum(size_of(os.path.join(path, name)) for name in os.listdir(path))
    return os.lstat(path).st_size


def main(argv):
    keep = 2
    if len(argv) > 1 and argv[0] == "--keep":
        keep, argv = int(argv[1]), argv[2:]
    if len(argv) < 2 or keep < 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    target_dir, manifests = argv[0], argv[1:]
    if not os.path.isdir(target_dir):
        return 0
    names = set()
    for manifest in manifests:
        names |= workspace_names(manifest)
    freed = count = 0
    for directory in artifact_dirs(target_dir):
        for path in stale_entries(directory, names, keep):
            try:
                size = size_of(path)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            except OSError as error:
                print(f"prune_cache: cannot delete {path}: {error}", file=sys.stderr)
                continue
            freed, count = freed + size, count + 1
    print(f"prune_cache: {target_dir}: deleted {count} stale builds of the workspace's "
          f"crates ({freed / 2**30:.1f} GiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        print(f"prune_cache: skipped: {error}", file=sys.stderr)
        sys.exit(0)
