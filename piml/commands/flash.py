"""`piml flash`: write an OS image to a disk or an image file, customised for a node, and verify it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import ByteProgress, console, print_json

EXIT_INTERRUPTED = 130


@dataclass
class Options:
    image: str | None
    device: str | None
    node: str | None = None
    yes: bool = False
    list_disks: bool = False
    json: bool = False
    sha256: str | None = None
    unmount: bool = False
    allow_fixed: bool = False
    verify: bool = True
    output: Path | str | None = None
    all_nodes: bool = False
    force: bool = False  # replace an existing --output file
    cm4: bool = False
    rpiboot_timeout: float = 60.0
    project: Path | None = None
    inventory: Path | None = None


def run(opts: Options) -> None:
    if opts.list_disks:
        return show_disks(opts.json)
    _check_usage(opts)
    image = _resolve_image(opts)
    factory = _factory(opts)
    if opts.output is not None:
        names = factory.names() if opts.all_nodes else [opts.node] if opts.node else []
        # Every file is checked before anything is asked (the Wi-Fi passphrase) or written.
        targets = _output_targets(opts, names, image.path)
        setups = {name: factory.for_node(name) for name in names}
        for path, name in targets:
            _flash_to_file(image, path, setups.get(name) if name else None, opts)
        return
    setups = {opts.node: factory.for_node(opts.node)} if opts.node else {}
    device = opts.device
    if opts.cm4:
        from piml.flash.rpiboot import wait_for_cm4

        device = wait_for_cm4(opts.rpiboot_timeout, console().print)
    setup = setups.get(opts.node) if opts.node else None
    _flash_to_disk(image, device, setup, opts)


def _check_usage(opts: Options) -> None:
    if not opts.image:
        raise InputError(
            Problem(
                "piml flash",
                "no IMAGE given",
                "e.g. `piml flash 2025-11-24-raspios-bookworm-arm64-lite.img.xz /dev/sdb --node pi1`, or `piml flash --list`",
            )
        )
    if opts.output is not None and not str(opts.output).strip():
        raise InputError(
            Problem(
                "--output",
                "is empty",
                "name the image file to write, e.g. --output pi1.img (or a directory with --all)",
            )
        )
    if opts.force and opts.output is None:
        raise InputError(
            Problem(
                "--force", "replaces an existing --output file; a disk is confirmed with -y instead", "drop --force"
            )
        )
    if opts.all_nodes and opts.output is None:
        raise InputError(
            Problem(
                "--all",
                "writes one image file per node and needs --output DIR",
                "add --output images/ (flash disks one at a time with --node NAME)",
            )
        )
    if opts.all_nodes and opts.node:
        raise InputError(
            Problem("--all", "--all and --node exclude each other", "use --all for every node, or --node NAME for one")
        )
    if opts.output is not None and (opts.device or opts.cm4):
        raise InputError(Problem("--output", "writes a file, not a DEVICE", "drop DEVICE (or --cm4), or drop --output"))
    if opts.output is None and not opts.device and not opts.cm4:
        raise InputError(
            Problem(
                "piml flash",
                "no DEVICE given",
                "name the disk (see `piml flash --list`), use --cm4 for a Compute Module's eMMC, or --output FILE",
            )
        )
    if opts.cm4 and opts.device:
        raise InputError(Problem("--cm4", "finds the eMMC itself; do not give a DEVICE too", "drop DEVICE"))


def show_disks(as_json: bool) -> None:
    from piml.flash.disks import human_size, list_disks

    disks = list_disks()
    if as_json:
        print_json({"disks": [d.as_dict() for d in disks]})
        return
    if not disks:
        console().print("No disks found. Plug in the card reader (or run `piml flash --cm4` for a Compute Module).")
        return
    from rich.table import Table

    table = Table(title="Disks", title_justify="left")
    for column in ("device", "size", "model", "transport", "removable", "mounted"):
        table.add_column(column)
    for d in disks:
        note = "SYSTEM DISK" if d.system else ", ".join(d.mounts) or "-"
        table.add_row(
            d.path, human_size(d.size), d.model or "-", d.transport or "-", "yes" if d.removable else "no", note
        )
    console().print(table)


def _resolve_image(opts: Options):
    from piml.flash.sources import SourceError, inspect

    text = opts.image
    if text.startswith(("https://", "http://")):
        from piml.flash.download import fetch

        path = fetch(text, opts.sha256, console().print)
    else:
        path = Path(text).expanduser()
        if opts.sha256:
            from piml.flash.download import check_file_sha256

            check_file_sha256(path, opts.sha256, text)
    try:
        return inspect(path)
    except SourceError as exc:
        raise InputError(Problem(text, str(exc))) from None


class _NoNodes:
    def names(self) -> list[str]:
        return []


def _factory(opts: Options):
    """The first-boot settings of the inventory's nodes (nothing is asked until a node's are built)."""
    if not opts.node and not opts.all_nodes:
        return _NoNodes()
    from piml.flash.settings import SetupFactory
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(opts.project, opts.inventory))

    def ask(prompt: str) -> str:
        import typer

        return typer.prompt(prompt, hide_input=True)

    return SetupFactory(cluster, ask)


def _output_targets(opts: Options, names: list[str], source: Path) -> list[tuple[Path, str | None]]:
    """(file, node) to write, every one checked first: none is the IMAGE itself (also through a symbolic or hard
    link), none is a disk or anything else that is not a plain file, and none exists unless --force.

    An existing file is refused, not asked about, in a terminal too: the same command does the same thing typed
    or scripted, as `xz` and `zstd` without -f do; `-y` confirms writing a disk and never replaces a file.
    """
    from piml.fsutil import os_error_problem

    out = Path(opts.output).expanduser()
    try:
        return _checked_targets(opts, out, names, source)
    except OSError as exc:  # a name too long, a path through something unreadable: while looking at it
        raise InputError(os_error_problem(f"--output {out}", exc, "cannot use it")) from None


def _checked_targets(opts: Options, out: Path, names: list[str], source: Path) -> list[tuple[Path, str | None]]:
    from piml.fsutil import make_dirs, os_error_problem, refuse_inputs

    if opts.all_nodes:
        if out.exists() and not out.is_dir():
            raise InputError(
                Problem(
                    f"--output {out}", "is a file; --all writes one image per node into a directory", "name a directory"
                )
            )
        targets = [(out / f"{name}.img", name) for name in names]
    else:
        if out.is_dir():
            out = out / f"{opts.node or 'image'}.img"
        if out.exists() and out.is_block_device():
            raise InputError(
                Problem(f"--output {out}", "is a block device", "give it as DEVICE (without --output) to flash it")
            )
        if os.path.lexists(out.parent) and not out.parent.is_dir():
            raise InputError(
                Problem(f"--output {out}", f"'{out.parent}' is not a directory", "name a file inside a directory")
            )
        if not out.parent.is_dir():
            raise InputError(Problem(f"--output {out}", "its directory does not exist", f"create {out.parent} first"))
        targets = [(out, opts.node)]
    refuse_inputs([path for path, _ in targets], [source], "--output")
    problems = []
    for path, _ in targets:
        if not os.path.lexists(path):
            continue
        if not path.is_file():
            problems.append(Problem(f"--output {path}", "exists and is not a plain file", "name another file"))
        elif not opts.force:
            problems.append(
                Problem(f"--output {path}", "already exists", "pass --force to replace it, or name another file")
            )
    if problems:
        raise InputError(problems)
    if opts.all_nodes:
        try:
            make_dirs(out)
        except OSError as exc:
            raise InputError(os_error_problem(f"--output {out}", exc, "cannot create the directory")) from None
    return targets


def _holds_secrets(setup) -> bool:
    """Whether a customised image carries a secret: the Wi-Fi PSK (the user's password is locked, never set)."""
    return setup is not None and setup.wifi is not None


def _editor(setup, applied: list):
    if setup is None:
        return None

    def edit(view) -> None:
        from piml.flash import firstboot
        from piml.flash.fat import FatVolume

        applied.append(firstboot.apply(FatVolume(view), setup))

    return edit


def _write(image, target, setup, where: str, opts: Options):
    """Write and verify; turns every failure into one line with the fix."""
    from piml.flash import writer
    from piml.flash.disks import human_size
    from piml.flash.fat import FatError
    from piml.flash.firstboot import FirstBootError
    from piml.flash.sources import SourceError, Stream
    from piml.flash.verify import verify

    applied: list = []
    progress = ByteProgress(f"writing {where}", image.size)
    again = "run the same command again to start over"
    try:
        stream = Stream(image)
        result = writer.write_image(
            stream,
            target,
            size_hint=image.size or image.size_hint,
            edit=_editor(setup, applied),
            progress=progress,
            digest=opts.verify,
        )
    except writer.TooLarge as exc:
        raise InputError(
            Problem(
                where,
                f"is too small: {human_size(exc.capacity)} for an image of at least {human_size(exc.needed)}",
                "use a larger card",
            )
        ) from None
    except (FirstBootError, FatError, writer.EditError) as exc:
        raise InputError(
            Problem(
                opts.image,
                f"{exc}",
                "flash it without --node and set it up by hand, or use a Raspberry Pi OS or Ubuntu image",
            )
        ) from None
    except SourceError as exc:
        raise PimlError(Problem(opts.image, f"{exc}; {where} was left incomplete", again), EXIT_FAILED) from None
    except writer.Interrupted as exc:
        raise PimlError(
            Problem(where, f"interrupted after {human_size(exc.done)}: it holds no usable image now", again),
            EXIT_INTERRUPTED,
        ) from None
    except writer.TargetError as exc:
        gone = exc.errno in (5, 6, 19)  # EIO, ENXIO, ENODEV: the disk went away or failed
        what = "stopped answering (unplugged or failing)" if gone else f"write failed: {exc}"
        raise PimlError(
            Problem(
                where,
                f"{what} after {human_size(exc.done)}; it holds no usable image now",
                "plug it in again (or try another card) and " + again,
            ),
            EXIT_FAILED,
        ) from None
    finally:
        progress.close()
    for item in applied:
        console().print(f"customised ({item.mechanism}): {', '.join(item.files)}", markup=False)
    rate = result.size / result.seconds / (1 << 20) if result.seconds else 0
    console().print(
        f"wrote {human_size(result.size)} in {result.seconds:.1f} s ({rate:.0f} MiB/s; "
        f"{human_size(result.zeroed)} of zeros left to the {'disk' if target.device else 'file system'})",
        markup=False,
    )
    if not opts.verify:
        return result
    vprog = ByteProgress(f"verifying {where}", result.size)
    try:
        check = verify(target.path, result.size, result.regions, vprog)
    except KeyboardInterrupt:
        raise PimlError(
            Problem(
                where,
                "verification interrupted: the image was written but not checked",
                "run again, or pass --no-verify to skip the check",
            ),
            EXIT_INTERRUPTED,
        ) from None
    except OSError as exc:
        raise PimlError(
            Problem(where, f"cannot read it back: {exc.strerror or exc}", "plug it in again and " + again), EXIT_FAILED
        ) from None
    finally:
        vprog.close()
    if not check.ok:
        raise PimlError(
            Problem(
                where,
                f"reads back different data from {human_size(check.bad_offset or 0)} on (a failing card or reader?)",
                "try another card or reader and " + again,
            ),
            EXIT_FAILED,
        )
    console().print(f"verified: {where} reads back what was written (sha256 {check.digest[:16]})", markup=False)
    return result


def _flash_to_file(image, path: Path, setup, opts: Options) -> None:
    """An image file, written under a new temporary name and given its name when complete and verified.

    The temporary file is created exclusively, 0600 when the image will hold a secret (else 0644), so the
    secret is never readable by others; the final name replaces an existing file only with --force, and never
    one that appeared meanwhile without it."""
    import secrets as random

    from piml.flash.writer import Target
    from piml.fsutil import os_error_problem, publish

    tmp = path.with_name(f".{path.name}.{random.token_hex(4)}.piml-partial")
    mode = 0o600 if _holds_secrets(setup) else 0o644
    try:
        target = Target(str(tmp), device=False, mode=mode)
    except OSError as exc:
        raise InputError(os_error_problem(f"--output {path}", exc, "cannot create it")) from None
    try:
        try:
            _write(image, target, setup, str(path), opts)
        finally:
            target.close()
        try:
            publish(tmp, path, replace=opts.force)
        except FileExistsError:
            raise InputError(
                Problem(
                    f"--output {path}",
                    "appeared while the image was being written, and was left as it is",
                    "pass --force to replace it, or name another file",
                )
            ) from None
        except OSError as exc:
            raise InputError(os_error_problem(f"--output {path}", exc, "cannot give the image its name")) from None
    finally:
        tmp.unlink(missing_ok=True)
    console().print(f"done: {path}" + (" (mode 0600: it holds the Wi-Fi key)" if mode == 0o600 else ""), markup=False)


def _flash_to_disk(image, device: str, setup, opts: Options) -> None:
    from piml.flash.disks import check_target, find_disk, human_size, unmount_all
    from piml.flash.writer import Target, TargetError

    disk = find_disk(device)
    size = image.size or image.size_hint
    check_target(disk, size, unmount=opts.unmount, allow_fixed=opts.allow_fixed)
    what = f"{disk.path}: {disk.model or 'unknown model'}, {human_size(disk.size)}, {disk.transport or 'unknown transport'}"
    node = f" for node {opts.node}" if opts.node else ""
    console().print(f"About to write {image.describe()}{node} to {what}. Everything on it will be lost.", markup=False)
    if not opts.yes:
        if not sys.stdin.isatty():
            raise InputError(Problem(disk.path, "not confirmed", "pass -y to confirm without a terminal"))
        import typer

        if not typer.confirm("Write it?", default=False):
            raise InputError(Problem(disk.path, "not confirmed: nothing was written", "answer y, or pass -y"))
    if disk.mounts and opts.unmount:
        unmount_all(disk)
    try:
        target = Target(disk.path, device=True, capacity=disk.size or None)
    except OSError as exc:
        if exc.errno == 16:  # EBUSY: O_EXCL refused, something holds it
            raise InputError(
                Problem(
                    disk.path,
                    "is in use (mounted or held by another program)",
                    "unmount it or pass --unmount, and close programs using it",
                )
            ) from None
        if exc.errno in (1, 13):
            raise InputError(
                Problem(disk.path, "permission denied", "run piml flash with sudo, or add yourself to the disk group")
            ) from None
        raise InputError(Problem(disk.path, f"cannot open it: {exc.strerror}", "check the device")) from None
    except TargetError as exc:
        raise InputError(Problem(disk.path, str(exc), "name a disk")) from None
    try:
        _write(image, target, setup, disk.path, opts)
    finally:
        target.close()
    _reread_partitions(disk.path)
    console().print(f"done: {disk.path} is ready{node}; you can remove it.", markup=False)


def _reread_partitions(path: str) -> None:
    """Tell the kernel about the new partition table (BLKRRPART); harmless when it cannot."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.ioctl(fd, 0x125F)
    except OSError:
        pass
    finally:
        os.close(fd)
