"""``opregistry``: list backends, show status, check configs; plugins add more commands.

The core knows no plugin: after its own commands it calls the
``opregistry_register_commands`` hook on every loaded plugin, which may add
subcommands (the built-in demo application adds ``demo`` and ``bench``).
Run ``opregistry --help`` (or ``python -m opregistry.registry.cli --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from opregistry import registry
from opregistry.registry.errors import RegistryError


# ---------------------------------------------------------------------------
# list / status / check-config
# ---------------------------------------------------------------------------

def cmd_list(args) -> int:
    rows = registry.default_registry().backends(interface="cli")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "available" if r["available"] else "unavailable"
        print(f"{r['name']}  [{state}]  from {r['distribution'] or 'unknown'} {r['version']}".rstrip())
        if r["reason"]:
            print(f"    reason: {r['reason']}")
        print(f"    ops: {', '.join(r['ops'])}")
        if r["description"]:
            print(f"    {r['description']}")
    skipped = registry.default_registry().plugins.skipped
    for s in skipped:
        print(f"skipped plugin {s.plugin_name} ({s.distribution or 'unknown'}): {s.reason}")
    return 0


def cmd_status(args) -> int:
    if args.backend or args.config:
        overrides = {"execution": args.execution} if args.execution else {}
        registry.enable(backend=args.backend, config=args.config, **overrides)
    st = registry.status()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    if not st["ops"]:
        print("no backend enabled in this process (PyTorch's own kernels serve every op); "
              "pass --backend NAME to enable one and show its status, or set OPREGISTRY_AUTOLOAD")
        return 0
    for op, info in st["ops"].items():
        print(f"{op}: {info['backend']} on {info['dispatch_key']} (execution {info['execution']}), "
              f"{describe_calls(info)}; configs: {' < '.join(info['config_files'])}")
    for name, info in st["backends"].items():
        print(f"backend {name}:")
        for key, value in info.items():
            print(f"    {key}: {value}")
    return 0


def describe_calls(info: dict) -> str:
    """An op's ``calls`` from :func:`registry.status` with its split, in words."""
    by_path = info.get("calls_by_path", {})
    text = (f"{info['calls']} calls ({by_path.get('dispatcher', 0)} through the dispatcher, "
            f"{by_path.get('fast_path', 0)} through the module fast path")
    handed = info.get("pytorch_kernel_calls", 0)
    return text + (f"; {handed} of them handed to PyTorch's own kernel by kernel: pytorch rules)" if handed else ")")


def cmd_check_config(args) -> int:
    cfg = registry.default_registry().build_config(args.backend, args.file)
    print(f"OK: {args.file} is a valid config for backend {cfg.backend!r} "
          f"(device {cfg.device or 'any'}, execution {cfg.execution})")
    print(f"    layers: {' < '.join(cfg.sources)}")
    for op, oc in cfg.ops.items():
        state = "enabled" if oc.enabled else "disabled"
        print(f"    {op}: {state}; {_describe(oc)}")
    return 0


def _describe(op_config) -> str:
    """The backend's op settings, generically: scalar fields, and rule names of lists."""
    parts = []
    for f in dataclasses.fields(op_config):
        if f.name == "enabled":
            continue
        value = getattr(op_config, f.name)
        if isinstance(value, tuple):
            value = "[" + ", ".join(getattr(v, "name", str(v)) for v in value) + "]"
        parts.append(f"{f.name}={value}")
    return ", ".join(parts) or "no settings"


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opregistry", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"opregistry {registry.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("list", help="installed backends, availability, ops, origin")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("status", help="which backend serves each op in this process")
    s.add_argument("--json", action="store_true", help="machine-readable output (registry.status() as JSON)")
    s.add_argument("--backend", help="enable this backend first (or the one --config names), then show the status")
    s.add_argument("--execution", choices=("auto", "compiled", "interpreter"),
                   help="with --backend: how its kernels run (default: the config's)")
    s.add_argument("--config", help="deployment config file, with --backend")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("check-config", help="validate a deployment config file")
    s.add_argument("file", help="YAML config file")
    s.add_argument("--backend", help="backend to check against (default: the file's 'backend' key)")
    s.set_defaults(func=cmd_check_config)

    add_plugin_commands(sub)
    return p


def add_plugin_commands(subparsers, plugins=None) -> None:
    """Let every loaded plugin add subcommands (hook ``opregistry_register_commands``).

    A plugin whose hook raises is reported on stderr and the commands it added
    are removed again; the others are not affected.
    """
    plugins = plugins if plugins is not None else registry.default_registry().plugins
    kwargs = {"subparsers": subparsers}
    for impl in plugins.pm.hook.opregistry_register_commands.get_hookimpls():   # load order
        before = dict(subparsers.choices)
        shown = list(subparsers._choices_actions)    # the help listing (argparse keeps it beside choices)
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
            replaced = [name for name, parser in before.items() if subparsers.choices.get(name) is not parser]
            if replaced:
                raise ValueError(f"it replaced the existing command {replaced[0]!r}")
        except Exception as exc:  # noqa: BLE001 - one plugin must not take the command line down
            subparsers.choices.clear()
            subparsers.choices.update(before)
            subparsers._choices_actions[:] = shown
            print(f"opregistry: plugin {impl.plugin_name!r} could not add its commands, left out: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RegistryError as exc:
        print(f"opregistry {args.command}: error: {exc.cli_message()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"opregistry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
