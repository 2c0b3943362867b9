"""Compute Module 4 eMMC: run `rpiboot` (raspberrypi/usbboot) so the eMMC shows up as a USB disk,
then find that new disk. Bounded: waits at most `timeout` seconds for it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem

INSTALL_HINT = (
    "install rpiboot: `sudo apt install rpiboot` (Raspberry Pi OS), or build it from "
    "https://github.com/raspberrypi/usbboot (`make` needs libusb-1.0-0-dev)"
)


def new_usb_disks(before: set[str], disks) -> list:
    """Disks that appeared since `before` and sit on USB: the CM4's eMMC. Pure, for tests."""
    return [d for d in disks if d.path not in before and d.transport == "usb" and not d.system]


def wait_for_cm4(
    timeout: float, say: Callable[[str], None], poll: float = 0.5, runner=subprocess.run, lister=None
) -> str:
    from piml.flash.disks import list_disks

    lister = lister or list_disks
    if shutil.which("rpiboot") is None and runner is subprocess.run:
        raise InputError(Problem("--cm4", "rpiboot is not installed", INSTALL_HINT))
    before = {d.path for d in lister()}
    say(
        "Fit the nRPIBOOT jumper on the CM4 IO board (or press nRPIBOOT), connect its USB port to this machine, power it."
    )
    say("running rpiboot (it waits for the board)...")
    started = time.monotonic()
    try:
        result = runner(["rpiboot"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PimlError(
            Problem(
                "--cm4",
                f"rpiboot found no Compute Module in {timeout:.0f} s",
                "check the nRPIBOOT jumper and the USB cable (the USB slave port), then run again",
            ),
            EXIT_FAILED,
        ) from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        raise PimlError(
            Problem(
                "--cm4", f"rpiboot failed: {last[0]}", "run it with sudo, check the jumper and cable, then run again"
            ),
            EXIT_FAILED,
        )
    deadline = started + timeout
    while time.monotonic() < deadline:
        found = new_usb_disks(before, lister())
        if len(found) == 1:
            say(f"the eMMC is {found[0].describe()}")
            return found[0].path
        if len(found) > 1:
            raise InputError(
                Problem(
                    "--cm4",
                    f"several new USB disks appeared ({', '.join(d.path for d in found)})",
                    "unplug the other disks, or flash the eMMC by name as DEVICE",
                )
            )
        time.sleep(poll)
    raise PimlError(
        Problem(
            "--cm4",
            f"rpiboot ran but no new USB disk appeared within {timeout:.0f} s",
            "replug the USB cable and run again, or find the disk with `piml flash --list` and give it as DEVICE",
        ),
        EXIT_FAILED,
    )
