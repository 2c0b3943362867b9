"""Special files where piml expects a plain one (issue 16): a FIFO nobody writes to (opening it would wait
forever), a FIFO that is fed (`-i <(cat hosts.yml)` must work), devices. Each ends within its bound, one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from tests.misuse import one_error

PIPE_BOUND = 10 + 10  # piml.yamlsrc.PIPE_WAIT_S, and Python's start


def run(cwd, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "piml", *args], cwd=cwd, capture_output=True, text=True, input="", timeout=timeout
    )
    return result, time.monotonic() - start


def test_an_inventory_fifo_nobody_writes_to_ends_in_its_bound(rack):
    os.mkfifo(rack.root / "hosts.fifo")
    result, seconds = run(rack.root, "inventory", "show", "-i", "hosts.fifo")
    one_error(result, "hosts.fifo", "nothing came through this pipe")
    assert seconds < PIPE_BOUND


def test_a_piml_yaml_that_is_a_fifo_ends_in_its_bound(rack):
    (rack.root / "piml.yaml").unlink()
    os.mkfifo(rack.root / "piml.yaml")
    result, seconds = run(rack.root, "plan")
    one_error(result, "piml.yaml", "nothing came through this pipe")
    assert seconds < PIPE_BOUND


def test_a_fed_fifo_is_read_like_a_file(rack):
    """What a shell's process substitution gives: -i <(cat hosts.yml)."""
    fifo = rack.root / "fed.fifo"
    os.mkfifo(fifo)
    text = (rack.root / "inventory/hosts.yml").read_bytes()

    def feed() -> None:
        time.sleep(1)  # the writer comes after piml has opened the pipe
        with open(fifo, "wb") as handle:
            for start in range(0, len(text), 64):  # in pieces, as a pipe delivers them
                handle.write(text[start : start + 64])
                handle.flush()
                time.sleep(0.01)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result, _ = run(rack.root, "inventory", "show", "-i", "fed.fifo", "--json")
    writer.join(10)
    assert result.returncode == 0, result.stderr
    assert '"s1"' in result.stdout and '"a1"' in result.stdout


def test_an_image_that_is_a_fifo_is_refused_at_once(rack):
    os.mkfifo(rack.root / "image.img")
    result, seconds = run(rack.root, "flash", "image.img", "--output", "out.img", "--node", "s1", timeout=30)
    one_error(result, "image.img", "is a pipe")
    assert seconds < 10 and not (rack.root / "out.img").exists()
