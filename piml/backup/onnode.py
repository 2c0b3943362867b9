"""The two programs piml runs on a node (as root, with the node's own python3, standard library only) to take a
directory out as a tar stream and to put one back. The directory is a local-path volume's, or k3s's server
directory (its SQLite datastore, kine's `db/state.db` in WAL mode, and its token).

Taking out: SQLite files (`*.db`) are copied with SQLite's online backup API, so a database a server is writing
(MLflow's, kine's in WAL mode) is copied as it was at one instant, never torn between the file and its -wal;
their -wal/-shm/-journal files are left out (the copy holds what they held). Redis's append-only files (a directory
with a manifest) are copied as the manifest names them, checked unchanged after; files being written (`temp-*`)
are left out. Everything else goes in as it is.

Putting back: the stream is unpacked beside the directory, then the directory is renamed aside (kept: nothing is
lost) and the unpacked one takes its place, with the old one's owner and mode. Names that would land outside it
(absolute, `..`, links pointing out) are refused before anything is written there."""

from __future__ import annotations

import shlex

SNAPSHOT = r"""
import io, os, shutil, sqlite3, sys, tarfile, tempfile, time
root, only = sys.argv[1], sys.argv[2:]
def aof_manifest(path):
    # Redis's multi-part AOF directory (appenddirname) holds one "<appendfilename>.manifest"
    found = [f for f in os.listdir(path) if f.endswith(".aof.manifest")] if os.path.isdir(path) else []
    return os.path.join(path, found[0]) if found else None
def add_aof(tar, path, name, manifest, scratch):
    # Redis 7's multi-part AOF (src/aof.c): a manifest names the base and incremental files; a rewrite writes new
    # ones, swaps the manifest in, then deletes the old. The files it names are copied, then the manifest is read
    # again: unchanged, the copies belong together (an incremental file's last command may be cut short, which
    # Redis loads: aof-load-truncated); changed, a rewrite came between, so again.
    for _ in range(20):
        with open(manifest, "rb") as f:
            before = f.read()
        files = [line.split()[1] for line in before.decode().splitlines() if line.startswith("file ")]
        copies = os.path.join(scratch, "aof")
        shutil.rmtree(copies, ignore_errors=True); os.mkdir(copies)
        try:
            for file in files:
                shutil.copyfile(os.path.join(path, file), os.path.join(copies, file))
            with open(manifest, "rb") as f:
                same = f.read() == before
        except FileNotFoundError:
            same = False
        if same:
            tar.add(path, arcname=name, recursive=False)
            for file in files:
                tar.add(os.path.join(copies, file), arcname=name + "/" + file)
            info = tar.gettarinfo(manifest, arcname=name + "/" + os.path.basename(manifest))
            info.size = len(before)
            tar.addfile(info, io.BytesIO(before))
            shutil.rmtree(copies)
            return
        time.sleep(0.2)
    sys.stderr.write("Redis rewrote its AOF in " + path + " all the time the copy took: try again\n"); sys.exit(5)
if not os.path.isdir(root):
    sys.stderr.write("no directory " + root + "\n"); sys.exit(3)
missing = [name for name in only if not os.path.exists(os.path.join(root, name))]
if missing:
    sys.stderr.write("no " + os.path.join(root, missing[0]) + "\n"); sys.exit(3)
scratch = tempfile.mkdtemp(prefix="piml-backup-")
try:
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in only or sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if name.endswith((".db-wal", ".db-shm", ".db-journal")):
                continue  # SQLite's side files: the copy holds what they held
            if name.startswith("temp-") and name.endswith((".rdb", ".aof")):
                continue  # Redis's files being written (a BGSAVE's, a rewrite's): renamed or deleted when done
            manifest = aof_manifest(path)
            if manifest:
                add_aof(tar, path, name, manifest, scratch)
                continue
            if name.endswith(".db") and os.path.isfile(path):
                copy = os.path.join(scratch, os.path.basename(name))
                source = sqlite3.connect(path, timeout=30)
                target = sqlite3.connect(copy)
                source.backup(target)
                target.close(); source.close()
                info = tar.gettarinfo(path, arcname=name)
                info.size = os.path.getsize(copy)
                with open(copy, "rb") as data:
                    tar.addfile(info, data)
                os.unlink(copy)
            else:
                tar.add(path, arcname=name)
finally:
    shutil.rmtree(scratch, ignore_errors=True)
"""

PUT_BACK = r"""
import os, shutil, sys, tarfile
root, stamp = sys.argv[1].rstrip("/"), sys.argv[2]
fresh, aside = root + ".piml-restoring", root + ".before-restore-" + stamp
shutil.rmtree(fresh, ignore_errors=True)
os.makedirs(fresh, mode=0o700)
# names are checked below before each is written; owners and modes are the volume's, kept (3.14's filter drops them)
trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
def inside(name):
    parts = os.path.normpath(name).split(os.sep)
    return not os.path.isabs(name) and ".." not in parts
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    for member in tar:
        target = os.path.join(os.path.dirname(member.name), member.linkname) if member.issym() else member.linkname
        link_ok = not (member.issym() or member.islnk()) or inside(target)
        if not inside(member.name) or not link_ok or member.isdev():
            shutil.rmtree(fresh, ignore_errors=True)
            sys.stderr.write("refused: the archive names " + member.name + " outside its directory\n"); sys.exit(4)
        tar.extract(member, fresh, numeric_owner=True, **trusted)
if os.path.isdir(root):
    st = os.stat(root)
    os.chown(fresh, st.st_uid, st.st_gid); os.chmod(fresh, st.st_mode & 0o7777)
    os.rename(root, aside)
    print(aside)
os.rename(fresh, root)
"""


def snapshot_command(directory: str, only: tuple[str, ...] = ()) -> str:
    """The shell command that writes `directory` as a tar stream to stdout (run it with sudo); with `only`, just
    those paths in it (each must exist: a missing one is an error, not a smaller backup)."""
    names = "".join(f" {shlex.quote(name)}" for name in only)
    return f"python3 -c {shlex.quote(SNAPSHOT)} {shlex.quote(directory)}{names}"


def put_back_command(directory: str, stamp: str) -> str:
    """The shell command that reads a tar stream on stdin into `directory`, the old one kept aside; it prints the
    old one's new path (nothing when there was none)."""
    return f"python3 -c {shlex.quote(PUT_BACK)} {shlex.quote(directory)} {shlex.quote(stamp)}"
