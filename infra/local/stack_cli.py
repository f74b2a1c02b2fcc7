"""The local stack's command line: ``python -m infra.local.stack_cli up|down|status|check-ports``
(``make up``/``down``/``status``); what each starts is :mod:`infra.local.stack`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from gpu_service.pipeline.dead_letters import replay_command
from infra.local import eventarc_bridge
from infra.local.emulators import EmulatorError
from infra.local.stack import DEAD_LETTER_SUBSCRIPTION, REPO, Stack
from infra.local.stack_config import StackConfig, StackError, busy_ports
from infra.local.supervision import exit_on_termination


def status_report(stack: Stack) -> int:
    rows = stack.status()
    if not rows:
        print(f"local stack: not running (no {stack.config.state_file})")
        return 0
    print(f"{'component':<18} {'pid':>7}  {'state':<10} {'url':<28} log")
    for r in rows:
        state = "running" if r["alive"] else "stopped"
        if r["alive"] and r["healthy"] is False:
            state = "unhealthy"
        if r.get("leader_exited"):
            state = "orphaned"  # its leader died, other processes of its group remain
        print(f"{r['name']:<18} {r['pid']:>7}  {state:<10} {r['url']:<28} {r['log']}")
    events_ok = eventarc_bridge.print_stats(stack.event_stats())
    events_ok = _print_dead_letters(stack) and events_ok
    events_ok = _print_review_dead_letters(stack) and events_ok
    if all(r["alive"] and not r["leader_exited"] and r["healthy"] is not False for r in rows):
        print(f"\nall running; `source {stack.config.env_file}` to use it")
        if not events_ok:
            print(f"some events could not be delivered: see {stack.config.log_dir / 'eventarc-bridge.log'}")
        return 0 if events_ok else 1
    print("\nsome components are not running: see their logs; `make down` then `make up`")
    return 1


def _print_held(
    title: str,
    fetch: Callable[[], list[dict[str, Any]]],
    describe: Callable[[dict[str, str]], str],
    hint: str,
) -> bool:
    """One hold subscription's messages, each described by its attributes, and what to do with them."""
    try:
        held = fetch()
    except Exception as exc:  # noqa: BLE001 - the emulator is down: the rows above say so
        print(f"{title}: unknown ({type(exc).__name__})")
        return False
    print(f"{title}: {len(held)} held")
    for message in held:
        print(f"  {describe(message.get('attributes') or {})}")
    if held:
        print(f"  {hint}")
    return not held


def _print_dead_letters(stack: Stack) -> bool:
    """Inference messages held on the dead-letter hold subscription: each names its upload."""
    replay = replay_command(DEAD_LETTER_SUBSCRIPTION)
    return _print_held(
        "dead letters",
        stack.dead_letters,
        lambda a: f"gs://{a.get('bucket', '?')}/{a.get('object', '?')}",
        f"replay them: source {stack.config.env_file} && .venv/bin/{replay}",
    )


def _print_review_dead_letters(stack: Stack) -> bool:
    """Radiologist decisions dead-lettered by the review route: each names its decision."""
    return _print_held(
        "review dead letters",
        stack.review_dead_letters,
        lambda a: f"review {a.get('review_id', '?')}",
        "republish them once fixed: manage.py publish_reviews --unreceipted (one SR per decision)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "check-ports"])
    parser.add_argument("--root", default=os.environ.get("LOCAL_ROOT", str(REPO / ".local")))
    args = parser.parse_args(argv)
    try:
        stack = Stack(StackConfig.from_env(args.root))
    except StackError as exc:
        print(f"local stack: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-ports":
        if stack.running():
            return 0  # ours: `up` will say it is already running
        problems = busy_ports(stack.config.ports)
        for p in problems:
            print(f"prerequisite missing: {p}", file=sys.stderr)
        return 1 if problems else 0
    if args.command == "up":
        exit_on_termination()
        if stack.running():
            print(f"the local stack is already running from {stack.config.root} (`make down` stops it)")
            return status_report(stack)
        print(
            f"starting the local stack under {stack.config.root} (logs: {stack.config.log_dir}) ...",
            flush=True,
        )
        try:
            stack.up()
        except (StackError, EmulatorError) as exc:
            print(f"\nmake up failed: {exc}\nlogs: {stack.config.log_dir}", file=sys.stderr)
            return 1
        print(f"local stack up in {stack.started_in_s:.0f}s")
        status_report(stack)
        return 0
    if args.command == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    return status_report(stack)


if __name__ == "__main__":
    sys.exit(main())
