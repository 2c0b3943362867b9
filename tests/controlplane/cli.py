"""scripts/control-plane: build, start and stop the real test control plane (see README.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  scripts/control-plane build
  scripts/control-plane up /tmp/cp --nodes 3 --node-memory 8Gi --arch arm64
  scripts/control-plane up /tmp/cp --node pi1:8Gi:arm64 --node pi2:4Gi:amd64 --node pi3
                                                   # named nodes; pi3 takes --node-memory and --arch
  scripts/control-plane up /tmp/cp --no-helm-controller --no-kuberay --no-local-path --no-traefik-crds
                                                   # the control plane and nodes only
  KUBECONFIG=/tmp/cp/kubeconfig kubectl get nodes     # or the kubernetes Python client
  scripts/control-plane down /tmp/cp
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/control-plane",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A real Kubernetes v1.36.3 control plane (kine, kube-apiserver, "
        "kube-controller-manager, kube-scheduler) on loopback, with stand-in nodes, "
        "k3s's helm-controller, local-path-provisioner and Traefik CRDs, and the KubeRay operator.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the binaries, or reuse them; prints their directory")
    u = sub.add_parser("up", help="start a control plane and N stand-in nodes from DIR")
    u.add_argument("dir", type=Path)
    u.add_argument("--nodes", type=int, default=None, help="how many nodes, named node-1..N (default 3)")
    u.add_argument(
        "--node",
        action="append",
        metavar="NAME[:MEMORY[:ARCH]]",
        help="one node, by name (a DNS-1123 label), memory (default --node-memory) and arch (arm64 or amd64, default "
        "--arch); repeat for each, in order (the first is labelled control-plane); excludes --nodes",
    )
    u.add_argument("--node-memory", default="8Gi", help="each node's memory (default 8Gi)")
    u.add_argument("--arch", default="arm64", help="each node's architecture: arm64 (default), amd64 or arm")
    u.add_argument("--json", action="store_true", help="print the state (ports, pids, paths) as JSON")
    u.add_argument(
        "--no-helm-controller",
        dest="helm_controller",
        action="store_false",
        help="do not run k3s's helm-controller (then no HelmChart is acted on)",
    )
    u.add_argument(
        "--no-kuberay",
        dest="kuberay",
        action="store_false",
        help="do not run the KubeRay operator (with --no-helm-controller, `up` installs its CRDs itself)",
    )
    u.add_argument(
        "--no-local-path",
        dest="local_path_storage",
        action="store_false",
        help="no local-path StorageClass and provisioner (then PVCs stay Pending)",
    )
    u.add_argument(
        "--no-traefik-crds",
        dest="traefik_crds",
        action="store_false",
        help="do not install Traefik's CRDs (Middleware, IngressRoute, ...; downloaded once with `go mod download`)",
    )
    dn = sub.add_parser("down", help="stop what `up DIR` started and remove what it made in DIR")
    dn.add_argument("dir", type=Path)
    dn.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args(argv)

    from . import build, cluster

    if args.cmd == "build":
        try:
            print(build.build(log=lambda m: print(m, file=sys.stderr)))
        except build.BuildError as e:
            print(f"control-plane build: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "up":
        try:
            t0 = time.monotonic()
            st = cluster.up(
                args.dir,
                args.nodes,
                args.node_memory,
                args.arch,
                node=args.node,
                log=lambda m: print(m, file=sys.stderr),
                helm_controller=args.helm_controller,
                kuberay=args.kuberay,
                local_path_storage=args.local_path_storage,
                traefik_crds=args.traefik_crds,
            )
        except cluster.UpError as e:
            print(f"control-plane up: {e}", file=sys.stderr)
            return 2 if isinstance(e, cluster.BadInput) else 1
        except KeyboardInterrupt:
            print("control-plane up: interrupted; everything started was stopped", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(
                f"control plane up in {time.monotonic() - t0:.1f} s: {st['server']}, {len(st['nodes'])} stand-in nodes "
                f"({', '.join(n['name'] for n in st['nodes'])}); "
                f"KUBECONFIG={Path(st['dir']) / 'kubeconfig'}; logs in {Path(st['dir']) / 'logs'}"
            )
        return 0
    killed = cluster.down(args.dir, keep_logs=args.keep_logs)
    if killed:
        print(f"control-plane down: {', '.join(killed)} did not stop on SIGTERM and was killed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
