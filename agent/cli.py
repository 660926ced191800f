"""`edgefleet-agent`: run the device daemon, probe runtimes, verify or install a bundle file."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from agent.settings import AgentSettings
from protocol.logs import configure_logging

# not __doc__: the unit runs the agent with PYTHONOPTIMIZE=2, which drops docstrings
DESCRIPTION = "Run the device daemon, probe runtimes, verify or install a bundle file."


def setup_logging(level: str) -> None:
    # text or JSON ($EDGEFLEET_LOG_FORMAT), the same as the controller's
    configure_logging(level)


def _settings(args: argparse.Namespace) -> AgentSettings:
    overrides: dict[str, object] = {}
    if args.device_id:
        overrides["device_id"] = args.device_id
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return AgentSettings.load(args.config, **overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent

    settings = _settings(args)
    setup_logging(settings.log_level)
    agent = Agent(settings)
    agent.install_signal_handlers()
    agent.run()
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from agent.selection import RuntimeHosts, choose_device, describe_preference, probe_runtimes

    device = choose_device(args.profile)
    profile, order = device.profile, device.preferences
    workers = dict(device.workers)
    if args.config is not None:
        local = AgentSettings.load(args.config).runtime_workers
        workers.update((str(key), worker) for key, worker in local.items())
    hosts = RuntimeHosts.from_profile(workers)
    probes = probe_runtimes(hosts)
    pythons = {key: launch.python for key, launch in hosts.launches.items()}
    if args.json:
        runtimes = [
            {"runtime": p.key, "available": p.available, "reason": p.reason} for p in probes
        ]
        preference = [describe_preference(p) for p in order]
        report = {
            "profile": profile,
            "preference": preference,
            "workers": pythons,
            "runtimes": runtimes,
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"profile    {profile}")
        print(f"preference {' > '.join(describe_preference(p) for p in order)}")
        for key, python in pythons.items():
            print(f"worker     {key} under {python}")
        for p in probes:
            print(f"{p.key:10} {'yes' if p.available else 'no ':3}  {p.reason}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from ota.errors import BundleRefused
    from ota.install import SlotStore
    from ota.trust_file import load_trust_store
    from ota.verify import verify_bundle

    settings = _settings(args)
    trust = load_trust_store(args.trust or settings.trust_file)
    now = datetime.now(timezone.utc)
    store = SlotStore(settings.data_dir / "bundles")
    try:
        if args.bundle_command == "verify":
            with args.file.open("rb") as stream:
                manifest = verify_bundle(
                    stream, trust, now, installed_version=store.installed_version
                )
            print(
                f"ok {manifest.name}@{manifest.version} variants="
                + ",".join(v.runtime for v in manifest.variants)
            )
        else:
            installed = store.install(args.file, trust, now, settings.profile)
            print(
                f"installed {installed.manifest.name}@{installed.manifest.version} "
                f"digest={installed.digest}; the running agent loads it on its next start"
            )
    except BundleRefused as exc:
        print(f"refused {exc.reason.value}: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from ota.errors import RootRefused
    from ota.trust_file import apply_root_chain, load_trust_store

    settings = _settings(args)
    path: Path = args.trust or settings.trust_file
    if args.trust_command == "update":
        documents = [root_file.read_bytes() for root_file in args.roots]
        try:
            version = apply_root_chain(path, documents, datetime.now(timezone.utc))
        except RootRefused as exc:
            print(f"refused {exc.reason.value}: {exc.detail}", file=sys.stderr)
            return 1
        print(f"trusting root version {version} ({path})")
        return 0
    trust = load_trust_store(path)
    expires = trust.expires.isoformat() if trust.expires else "never"
    kind = f"root version {trust.root_version}" if trust.root_version else "plain (no root)"
    print(f"trust      {path}: {kind}, expires {expires}")
    print(f"threshold  {trust.threshold} of {len(trust.release_keys)} release keys")
    for keyid in sorted(trust.release_keys):
        print(f"release    {keyid}{'  revoked' if keyid in trust.revoked else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description=DESCRIPTION)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="settings YAML (env EDGEFLEET_AGENT_* wins)")
    common.add_argument("--device-id", help="override the device id")
    common.add_argument("--data-dir", type=Path, help="override the data folder")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run the agent daemon")
    run.set_defaults(func=cmd_run)
    probe = sub.add_parser("probe", help="which runtimes load on this device, and why not")
    probe.add_argument("--json", action="store_true")
    probe.add_argument("--profile", help="force a device profile instead of detecting it")
    probe.add_argument("--config", type=Path, help="settings YAML whose runtime_workers to use")
    probe.set_defaults(func=cmd_probe)
    bundle = sub.add_parser("bundle", help="verify or install a bundle file (offline devices)")
    bsub = bundle.add_subparsers(dest="bundle_command", required=True)
    for name in ("verify", "install"):
        p = bsub.add_parser(name, parents=[common])
        p.add_argument("file", type=Path)
        p.add_argument("--trust", type=Path, help="trust store JSON (default from settings)")
        p.set_defaults(func=cmd_bundle)
    trust = sub.add_parser("trust", help="show the device's trust or step it to newer roots")
    tsub = trust.add_subparsers(dest="trust_command", required=True)
    show = tsub.add_parser("show", parents=[common], help="the trusted root and release keys")
    update = tsub.add_parser(
        "update", parents=[common], help="apply root documents, each the next version"
    )
    update.add_argument("roots", type=Path, nargs="+", help="root.N.json files in version order")
    for p in (show, update):
        p.add_argument("--trust", type=Path, help="trust file (default from settings)")
        p.set_defaults(func=cmd_trust)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValidationError, ValueError, OSError) as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
