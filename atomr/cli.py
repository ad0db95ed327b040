"""Command-line tools: deploy, undeploy, list, status and a one-shot chat against a running node.

Each `scripts/atomr-*` file calls one `*_main` function here. Errors print one clear line
(kind, what, which field) on stderr and exit non-zero; results print as text or JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from atomr.client import ADDRESS_ENV, DEFAULT_PORT, Client
from atomr.core.errors import InferenceError

EXIT_ERROR = 1


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--address",
        default=None,
        help=f"node address HOST:PORT (default ${ADDRESS_ENV} or 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _run(args: argparse.Namespace, action: Callable[[Client], Any], render: Callable[[Any], str]) -> int:
    try:
        with Client(args.address) as client:
            result = action(client)
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(_plain(result), indent=2) if args.json else render(result))
    return 0


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "address"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _deployment_line(d: Any) -> str:
    ready = sum(1 for r in d.replicas if r.state == "ready")
    line = f"{d.name:24} {d.runtime:10} v{d.version:6} {d.state:10} {ready}/{len(d.replicas)} replicas ready"
    return line + (f"  error: {d.error}" if d.error else "")


def deploy_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("atomr-deploy", "Deploy every deployment in a YAML file to a running node.")
    p.add_argument("file", help="YAML file with 'deployments:' or one deployment")
    p.add_argument("--no-wait", action="store_true", help="return before replicas are ready")
    args = p.parse_args(argv)

    def show(info: Any) -> None:
        print(
            f"  ... {_deployment_line(info)}" + (f"  [{info.swap}]" if info.swap else ""), file=sys.stderr, flush=True
        )

    return _run(
        args,
        lambda c: c.deploy(args.file, wait=not args.no_wait, progress=show),
        lambda r: "\n".join(map(_deployment_line, r)),
    )


def undeploy_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("atomr-undeploy", "Remove a deployment; in-flight requests finish first.")
    p.add_argument("name")
    args = p.parse_args(argv)
    return _run(args, lambda c: c.undeploy(args.name), lambda d: f"undeployed {d.name}")


def list_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("atomr-list", "List deployments.")
    args = p.parse_args(argv)
    return _run(args, lambda c: c.list_deployments(), lambda r: "\n".join(map(_deployment_line, r)) or "no deployments")


def _node_health(n: Any) -> str:
    health = getattr(n, "health", "") or "-"
    age = getattr(n, "heartbeat_age_s", None)
    return health if health == "ok" or age is None else f"{health}({age:.1f}s)"


def status_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("atomr-status", "Show the head (its term and standbys), nodes, deployments and replicas.")
    args = p.parse_args(argv)

    def render(st: dict[str, Any]) -> str:
        head = st.get("head") or {}
        standbys = head.get("standbys") or []
        lines = [
            f"head: {st.get('address', '-')} leads, term {head.get('term', 1)}; standby: "
            + (", ".join(f"{s['address']} (last sync {s['last_sync_s']:.1f} s ago)" for s in standbys) or "none")
        ]
        lines.append("nodes:")
        lines += [
            f"  {n.node_id:24} {n.role:5} {n.host}:{n.port} pid={n.pid} gpus={','.join(n.gpu_ids) or '-'} "
            f"health={_node_health(n)} runtimes={','.join(n.runtimes) or '-'}"
            for n in st["nodes"]
        ]
        lines.append("deployments:")
        for d in st["deployments"]:
            lines.append("  " + _deployment_line(d))
            for r in d.replicas:
                line = (
                    f"    {r.replica_id:28} {r.state:10} node={r.node_id} host={r.host or '-'} pid={r.pid} "
                    f"gpus={','.join(r.gpu_ids) or '-'} inflight={r.inflight} restarts={r.restarts}"
                )
                circuit = (r.health or {}).get("circuit")
                if circuit:
                    line += f" circuit={circuit.get('state')}"
                lines.append(line + (f"  error: {r.error}" if r.error else ""))
        return "\n".join(lines)

    return _run(args, lambda c: {**c.status(), "address": f"{c.host}:{c.port}"}, render)


def chat_main(argv: Sequence[str] | None = None) -> int:
    p = _parser("atomr-chat", "Send one chat message (or a completion prompt) and print the answer.")
    p.add_argument("model")
    p.add_argument("message")
    p.add_argument("--completion", action="store_true", help="send MESSAGE as a raw completion prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stream", action="store_true", help="print chunks as they arrive")
    args = p.parse_args(argv)
    params: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.completion:
        params["prompt"] = args.message
    else:
        params["messages"] = args.message
    if args.stream and not args.json:
        try:
            with Client(args.address) as client:
                for chunk in client.stream(args.model, **params):
                    print(chunk.text, end="", flush=True)
                print()
        except InferenceError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return EXIT_ERROR
        return 0
    return _run(args, lambda c: c.generate(args.model, **params), lambda r: r.text)
