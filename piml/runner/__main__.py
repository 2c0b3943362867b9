"""`python -m piml.runner [--once | --drain]`: run queued requests.

Reads PIML_QUEUE_URL (redis://... or amqp://...; PIML_QUEUE_PASSWORD, if set, replaces the URL's password),
MLFLOW_TRACKING_URI and MLflow's usual credential variables (MLFLOW_TRACKING_USERNAME / _PASSWORD).
Exit 0 when it ran its requests, whatever their outcome (each is recorded on the request); 1 when the broker
cannot be reached; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m piml.runner", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="take one request, run it and exit")
    mode.add_argument("--drain", action="store_true", help="run requests until none comes within --wait seconds")
    parser.add_argument(
        "--wait",
        type=float,
        default=float(os.environ.get("PIML_RUNNER_WAIT", 60)),
        help="seconds to wait for a request (default 60, $PIML_RUNNER_WAIT)",
    )
    parser.add_argument("--queue-url", default=None, help="broker URL (default $PIML_QUEUE_URL)")
    parser.add_argument(
        "--runner-id", default=None, help="this runner's name (default $PIML_RUNNER_ID, else host-pid-random)"
    )
    parser.add_argument(
        "--retries", type=int, default=None, help="retries after the first attempt (default $PIML_RETRIES or 3)"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=float(os.environ.get("PIML_LEASE_SECONDS", 30)),
        help="seconds without a heartbeat before this runner counts as dead (Redis; default 30)",
    )
    args = parser.parse_args(argv)

    from piml.errors import PimlError
    from piml.queue import connect
    from piml.runner import Runner, serve

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave the request in processing: it is reaped
    try:
        options = (
            {"lease_seconds": args.lease}
            if (args.queue_url or os.environ.get("PIML_QUEUE_URL", "")).startswith("redis")
            else {}
        )
        broker = connect(args.queue_url, **options)
        runner = Runner(broker)
        if args.runner_id:
            runner.runner_id = args.runner_id
        if args.retries is not None:
            runner.retries = args.retries
        serve(broker, once=args.once, drain=args.drain, wait=args.wait, runner=runner)
    except PimlError as exc:
        for problem in exc.problems:
            print(f"piml-runner: error: {problem}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the broker went away mid-run: one line, exit 1
        from piml.runner import scrub

        print(f"piml-runner: error: {type(exc).__name__}: {scrub(str(exc))[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
