"""Developer CLI for test nodes.

  python -m tests.nodes up 3 [--model pi5|cm4|pi4|other] [--hostname-all raspberrypi]
  python -m tests.nodes status
  python -m tests.nodes ssh node1 [command...]
  python -m tests.nodes run node1 'systemctl status ssh'     (as root, via nsenter; works with the link cut)
  python -m tests.nodes stop|start|cut|restore|newkey|sudopw node1
  python -m tests.nodes throttled node1 0x50005
  python -m tests.nodes down
  python -m tests.nodes cleanup                               (remove leftovers of every instance)

Nodes from `up` keep running after the command returns, until `down`. The CLI uses instance 1
(bridge pimlbr1, 198.18.1.0/24); pytest uses instance 0, so both can be up at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .substrate import MODELS, Substrate, SubstrateError, check_environment, cleanup_stale

DEFAULT_INSTANCE = int(os.environ.get("PIML_TESTNODES_CLI_INSTANCE", "1"))


def _print_nodes(sub: Substrate) -> None:
    if not sub.nodes:
        print("no nodes up")
        return
    print(f"{'NAME':8} {'ADDRESS':14} {'MODEL':6} {'HOSTNAME':12} {'STATE':8} SSH")
    for n in sorted(sub.nodes.values(), key=lambda n: n.index):
        state = "running" if sub.is_running(n) else "stopped"
        print(f"{n.name:8} {n.address:14} {n.model:6} {n.hostname:12} {state:8} {n.ssh_command_line()}")
    print(f"key: {sub.key_path}   known_hosts: {sub.known_hosts}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.nodes",
        description="piml test nodes (systemd-nspawn)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--instance", type=int, default=DEFAULT_INSTANCE, help="0..9 (default %(default)s)")
    sp = p.add_subparsers(dest="cmd", required=True)
    up = sp.add_parser("up", help="boot N nodes (replaces nodes already up in this instance)")
    up.add_argument("count", type=int)
    up.add_argument("--model", default="pi5", choices=sorted(MODELS))
    up.add_argument(
        "--hostname-all",
        default=None,
        metavar="NAME",
        help="give every node this hostname (e.g. raspberrypi, like fresh Pi images)",
    )
    sp.add_parser("down", help="stop and remove all nodes of the instance")
    sp.add_parser("status", help="list nodes")
    sp.add_parser("cleanup", help="remove leftovers of all instances (crashed runs)")
    s = sp.add_parser("ssh", help="ssh to a node as pi")
    s.add_argument("name")
    s.add_argument("command", nargs=argparse.REMAINDER)
    r = sp.add_parser("run", help="run a shell command in a node as root (nsenter)")
    r.add_argument("name")
    r.add_argument("command")
    for fault in ("stop", "start", "cut", "restore", "newkey", "sudopw"):
        sp.add_parser(fault, help=f"fault helper: {fault}").add_argument("name")
    t = sp.add_parser("throttled", help="set what vcgencmd get_throttled answers")
    t.add_argument("name")
    t.add_argument("value")
    a = p.parse_args(argv)

    if a.cmd == "cleanup":
        cleanup_stale(None)
        return 0
    problems = check_environment()
    if problems:
        print("cannot run test nodes here:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    try:
        if a.cmd == "up":
            sub = Substrate(instance=a.instance, hostname_all=a.hostname_all)
            sub.teardown()
            sub.setup()
            t0 = time.monotonic()
            sub.create(a.count, model=a.model)
            print(f"{a.count} node(s) up in {time.monotonic() - t0:.1f}s (sshd answering)")
            _print_nodes(sub)
            print("tear down with: python -m tests.nodes down")
            return 0
        if a.cmd == "down":
            Substrate(instance=a.instance).teardown()
            return 0
        sub = Substrate.load(a.instance)
        if a.cmd == "status":
            _print_nodes(sub)
            return 0
        node = sub.nodes.get(a.name)
        if node is None:
            print(
                f"no node {a.name!r} in instance {a.instance} (have: {', '.join(sub.nodes) or 'none'})", file=sys.stderr
            )
            return 2
        if a.cmd == "ssh":
            os.execvp("ssh", node.ssh_argv(*a.command))
        if a.cmd == "run":
            res = sub.run(node, a.command, check=False)
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            return res.returncode
        {
            "stop": sub.stop,
            "start": sub.start,
            "cut": sub.cut_link,
            "restore": sub.restore_link,
            "sudopw": sub.require_sudo_password,
        }.get(a.cmd, lambda n: None)(node)
        if a.cmd == "newkey":
            print(sub.new_host_key(node))
        if a.cmd == "throttled":
            sub.set_throttled(node, a.value)
        return 0
    except SubstrateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
