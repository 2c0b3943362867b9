"""The scheduled backup (backup.schedule): the program the CronJob's pod runs in MLflow's own image, shipped in
a ConfigMap beside piml/backup/onnode.py's SNAPSHOT program (standard library only: the image has nothing else).

    python3 scheduled.py SNAPSHOT_PY SOURCE_DIR BACKUP_DIR --keep N --project P --mlflow-version V --piml-version V
        [--database-dump FILE] [--s3-uri s3://BUCKET[/PREFIX] [--s3-endpoint URL] [--s3-region R]]
        (the bucket's keys: $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY)

It takes SOURCE_DIR (MLflow's volume) with SNAPSHOT (SQLite copied online, the rest as it is) and writes the same
archive `piml backup` writes (piml/backup/archive.py, format piml-backup/1) holding that part, and with
--database-dump the part mlflow-db too (MLflow's PostgreSQL database, pg_dump'ed by the pod's init container; a dump
without pg_dump's last line fails the run), so
`piml restore` takes it as it is: published under its final name only when whole, mode 0600, with its
`.sha256` beside it. Then the oldest archives beyond N are deleted, and partial files a killed run left.
A run that fails leaves the archives it found as they were, and exits non-zero (the Job retries it).

With --s3-uri the newest N are also in the bucket, off the board (s3store.py, shipped beside it): each one the
bucket lacks is uploaded, its `.sha256` after it (so an archive with its .sha256 there is whole), and the bucket's
oldest beyond N are deleted. An upload that failed is made by the next run."""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

FORMAT = "piml-backup/1"
PART = "mlflow"
# as piml/backup/take.py and postgres.py name them (tests/backup/test_scheduled_program.py checks they agree)
DATABASE_PART, DUMP, TRAILER = "mlflow-db", "mlflow.sql", "-- PostgreSQL database dump complete"
LEFT_OUT = {
    "project": "a scheduled backup runs in the cluster: the project (inventory, piml.yaml, .piml/) is on your machine",
    "k3s datastore": "a scheduled backup holds the platform's data: `piml backup` takes the datastore",
    "queue": "a scheduled backup runs beside MLflow, on its board: `piml backup` takes the queue",
}


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def private_file(path):
    """A new file only its owner can read, from its first byte (whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def take(args, now):
    stamp = time.strftime("%Y%m%dT%H%M%SZ", now)
    name = f"piml-backup-{args.project}-{stamp}.tar.gz"
    final = os.path.join(args.backup_dir, name)
    partial = os.path.join(args.backup_dir, "." + name + ".partial")
    scratch = tempfile.mkdtemp(prefix=".piml-scheduled-", dir=args.backup_dir)
    part = os.path.join(scratch, PART + ".tar")
    try:
        with private_file(part) as out:
            taken = subprocess.run(
                [sys.executable, args.snapshot, args.source], stdout=out, stderr=subprocess.PIPE, timeout=args.timeout
            )
        if taken.returncode != 0:
            said = taken.stderr.decode(errors="replace").strip().splitlines() or [f"exit {taken.returncode}"]
            raise OSError(f"copying {args.source}: {said[-1][:300]}")
        described = {"claim": "mlflow-data", "node": os.environ.get("NODE_NAME", ""), "path": args.source}
        parts = {PART: (part, described)}
        if args.database_dump:
            parts[DATABASE_PART] = (os.path.join(scratch, DATABASE_PART + ".tar"), database_part(args.database_dump))
            with private_file(parts[DATABASE_PART][0]) as out, tarfile.open(fileobj=out, mode="w") as tar:
                tar.add(args.database_dump, arcname=DUMP, recursive=False)
        manifest = {
            "format": FORMAT,
            "project": args.project,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", now),
            "versions": {"piml": args.piml_version, "mlflow": args.mlflow_version},
            "parts": {
                part_name: {"sha256": sha256_of(path), "size": os.path.getsize(path), **said, "scheduled": True}
                for part_name, (path, said) in parts.items()
            },
            "left_out": LEFT_OUT,
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        with private_file(partial) as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mode = len(body), 0o600
                tar.addfile(info, io.BytesIO(body))
                for part_name, (path, _) in parts.items():
                    tar.add(path, arcname=part_name + ".tar", recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, final)
        with private_file(final + ".sha256.partial") as out:
            out.write((f"{sha256_of(final)}  {name}\n").encode())
        os.rename(final + ".sha256.partial", final + ".sha256")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
        for leftover in os.listdir(scratch):
            os.unlink(os.path.join(scratch, leftover))
        os.rmdir(scratch)
    return final


def database_part(dump):
    """What the manifest says of the dump at `dump` (pg_dump's plain SQL); OSError when it is not whole."""
    with open(dump, "rb") as handle:
        head = handle.read(4096).decode(errors="replace")
        handle.seek(max(0, os.path.getsize(dump) - 256))
        end = handle.read()
    if TRAILER.encode() not in end:
        raise OSError(f"the database dump {dump} is cut short (it lacks pg_dump's last line, {TRAILER!r})")
    said = [line.split()[5:6] for line in head.splitlines() if line.startswith("-- Dumped from database version ")]
    return {
        "deployment": "mlflow-postgres",
        "database": "mlflow",
        "dump": DUMP,
        "server": "".join(said[0] if said else []),
    }


def prune(args):
    """Keep the newest `keep` archives of this project (their names sort by time); the rest go, with their
    .sha256, and what a killed run left (partial files, scratch directories)."""
    prefix = f"piml-backup-{args.project}-"
    archives = sorted(n for n in os.listdir(args.backup_dir) if n.startswith(prefix) and n.endswith(".tar.gz"))
    gone = archives[: max(0, len(archives) - args.keep)]
    for name in gone:
        for path in (name, name + ".sha256"):
            if os.path.exists(os.path.join(args.backup_dir, path)):
                os.unlink(os.path.join(args.backup_dir, path))
    for name in os.listdir(args.backup_dir):
        path = os.path.join(args.backup_dir, name)
        if name.endswith(".partial") and os.path.isfile(path):
            os.unlink(path)
        elif name.startswith(".piml-scheduled-") and os.path.isdir(path):
            for leftover in os.listdir(path):
                os.unlink(os.path.join(path, leftover))
            os.rmdir(path)
    return gone


def ship(args, bucket, prefix):
    """Upload the archives kept here that the bucket (an s3store.Bucket) lacks under `prefix` (archive, then its
    .sha256), then delete the bucket's oldest beyond `keep`. Returns (uploaded, deleted) names."""
    mine = prefix + f"piml-backup-{args.project}-"
    there = set(bucket.list(mine))
    here = sorted(n for n in os.listdir(args.backup_dir) if n.startswith(mine[len(prefix) :]) and n.endswith(".tar.gz"))
    uploaded = []
    for name in here:
        if prefix + name in there and prefix + name + ".sha256" in there:
            continue
        path = os.path.join(args.backup_dir, name)
        with open(path + ".sha256", "rb") as handle:
            sums = handle.read()
        # the digest take() wrote, not the archive read again: S3 checks the body against it (x-amz-content-sha256)
        digest = (sums.split() or [b""])[0].decode(errors="replace")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):  # damaged: take it anew
            digest = sha256_of(path)
            sums = f"{digest}  {name}\n".encode()
        bucket.put_file(prefix + name, path, digest, os.path.getsize(path))
        bucket.put_bytes(prefix + name + ".sha256", sums)
        there |= {prefix + name, prefix + name + ".sha256"}
        uploaded.append(name)
    archives = sorted(key for key in there if key.endswith(".tar.gz"))
    deleted = []
    for key in archives[: max(0, len(archives) - args.keep)]:
        for gone in (key, key + ".sha256"):
            if gone in there:
                bucket.delete(gone)
        deleted.append(key[len(prefix) :])
    return uploaded, deleted


def main(argv=None):
    parser = argparse.ArgumentParser(prog="scheduled.py")
    parser.add_argument("snapshot")
    parser.add_argument("source")
    parser.add_argument("backup_dir")
    parser.add_argument("--keep", type=int, required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--mlflow-version", required=True)
    parser.add_argument("--piml-version", required=True)
    parser.add_argument("--timeout", type=float, default=3000.0)
    parser.add_argument("--database-dump")
    parser.add_argument("--s3-uri")
    parser.add_argument("--s3-endpoint")
    parser.add_argument("--s3-region")
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error("--keep must be at least 1")
    keys = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
    if args.s3_uri and not all(keys):
        parser.error("--s3-uri needs the bucket's keys in $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
    try:
        final = take(args, time.gmtime())
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"piml scheduled backup: failed, nothing kept from this run: {exc}\n")
        return 1
    print(f"piml scheduled backup: {final} ({os.path.getsize(final)} bytes)")
    for name in prune(args):
        print(f"piml scheduled backup: deleted {name} (keeping the newest {args.keep})")
    if args.s3_uri:
        import s3store  # beside this file, in the ConfigMap as in piml/backup/

        name, prefix = s3store.parse_uri(args.s3_uri)
        bucket = s3store.Bucket(args.s3_endpoint, name, args.s3_region, *keys, timeout=min(args.timeout, 600.0))
        try:
            uploaded, deleted = ship(args, bucket, prefix)
        except (OSError, s3store.S3Error) as exc:
            sys.stderr.write(f"piml scheduled backup: kept in {args.backup_dir}, not in {args.s3_uri}: {exc}\n")
            return 1
        for name in uploaded:
            print(f"piml scheduled backup: uploaded {name} to {args.s3_uri}")
        for name in deleted:
            print(f"piml scheduled backup: deleted {name} from {args.s3_uri} (keeping the newest {args.keep})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
