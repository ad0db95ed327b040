"""Command-line tools: deploy, undeploy, list, status, a one-shot chat and key management
(`atomr-keys`) against a running node.

Each `scripts/atomr-*` file calls one `*_main` function here. Errors print one clear line
(kind, what, which field) on stderr and exit non-zero; results print as text or JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from atomr.client import ADDRESS_ENV, DEFAULT_PORT, Client
from atomr.cluster.admin_key import ADMIN_KEY_FILE_ENV, admin_key_path, read_admin_key
from atomr.cluster.key_store import GROUPS
from atomr.core.errors import ConfigError, InferenceError, InvalidRequestError

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
        for group in ("tenant", "deployment"):
            lines.append(f"spend by {group}:")
            lines += [_spend_line(row, group) for row in st.get("spend", {}).get(group, [])] or ["  none"]
        return "\n".join(lines)

    def status(c: Client) -> dict[str, Any]:
        return {**c.status(), "address": f"{c.host}:{c.port}", "spend": c.spend_totals()}

    return _run(args, status, render)


def _spend_line(row: dict[str, Any], group: str) -> str:
    return (
        f"  {row[group] or '-':24} {row['requests']:8} requests {row['prompt_tokens']:10} in"
        f" {row['completion_tokens']:10} out {row['cost_usd']:14.6f} USD"
    )


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


# ---- atomr-keys ----------------------------------------------------------------------------


def keys_main(argv: Sequence[str] | None = None) -> int:
    p = _parser(
        "atomr-keys", "Make, list, show, revoke and rotate the API keys of a running cluster, and sum its spend."
    )
    p.add_argument(
        "--admin-key-file", default=None, metavar="PATH", help=f"the admin key (default ${ADMIN_KEY_FILE_ENV})"
    )
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a key and print its secret (shown this once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--models", default="*", help="comma-separated model names (default: every model)")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--max-parallel", type=int, default=None, help="requests in flight at once")
    create.add_argument("--budget-usd", type=float, default=None, help="money it may spend per period")
    create.add_argument("--period", default="total", help="total, day, week, month, or a length: 30s, 12h, 7d")
    create.add_argument("--expires-in", type=float, default=None, metavar="SECONDS", help="expire after this long")
    create.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("list", help="one line per key, starting with its id")
    for name, text in (("show", "a key and what it spent"), ("revoke", "revoke a key"), ("rotate", "new secret")):
        sub.add_parser(name, help=text).add_argument("id")
    spend = sub.add_parser("spend", help="spend summed by key, tenant, deployment, day or outcome")
    spend.add_argument("--by", default="key", choices=GROUPS)
    spend.add_argument("--since", type=float, default=None, metavar="UNIX_TIME")
    spend.add_argument("--until", type=float, default=None, metavar="UNIX_TIME")
    spend.add_argument("--key", default=None, metavar="ID", help="only this key's requests")
    args = p.parse_args(argv)

    def ask(client: Client) -> Any:
        path = admin_key_path(args.admin_key_file)
        if path is None:
            no_key = f"no admin key: give --admin-key-file or set ${ADMIN_KEY_FILE_ENV}"
            raise ConfigError(no_key, field="admin_key_file")
        admin_key = read_admin_key(path, "--admin-key-file" if args.admin_key_file else ADMIN_KEY_FILE_ENV)
        op, op_args = _keys_op(args)
        return client.keys_admin(op, admin_key, **op_args)

    return _run(args, ask, lambda result: _render_keys(args.command, result, args))


def _keys_op(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "create":
        metadata = {}
        for pair in args.metadata:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise InvalidRequestError(f"must be KEY=VALUE, not {pair[:40]!r}", field="metadata")
            metadata[name] = value
        fields: dict[str, Any] = {
            "tenant": args.tenant,
            "models": [m.strip() for m in args.models.split(",") if m.strip()],
            "rpm": args.rpm,
            "tpm": args.tpm,
            "max_parallel": args.max_parallel,
            "budget_usd": args.budget_usd,
            "period": args.period,
            "expires_at": time.time() + args.expires_in if args.expires_in is not None else None,
            "metadata": metadata,
        }
        return "create", {k: v for k, v in fields.items() if v is not None}
    if args.command == "spend":
        found = {"group_by": args.by, "since": args.since, "until": args.until, "key": args.key}
        return "spend", {k: v for k, v in found.items() if v is not None}
    if args.command == "list":
        return "list", {}
    return args.command, {"id": args.id}


def _key_line(k: dict[str, Any]) -> str:
    state = "revoked" if k.get("revoked_at") else "active"
    budget = (
        f"{k['spent_usd']:.6f}/{k['budget_usd']:.6f} USD ({k['period']})" if k.get("budget_usd") is not None else "-"
    )
    return f"{k['id']} {k['tenant']:16} {state:8} models={','.join(k['models'])} budget={budget}"


def _render_keys(command: str, result: Any, args: argparse.Namespace) -> str:
    if command in ("create", "rotate"):
        print(f"{result['key']['id']}: the secret below is shown this once", file=sys.stderr)
        return str(result["secret"])
    if command == "list":
        return "\n".join(_key_line(k) for k in result) or "(no keys)"
    if command == "spend":
        return "\n".join(_spend_line(row, args.by) for row in result) or "(no spend)"
    return json.dumps(result, indent=2) if command == "show" else _key_line(result)
