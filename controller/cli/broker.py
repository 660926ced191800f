"""`edgefleet broker config`: the production mosquitto files, made on the controller's host.

It reads the controller's settings (where the CAs live, the topic prefix), writes the broker's
certificate, CRL, ACL, plugin state and a `edgefleet.conf` to include from mosquitto.conf, and
issues the controller's own broker identity from the service CA. Local only: the CA keys never
cross the API.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.cli.client import EXIT_API_ERROR, EXIT_OK, EXIT_USAGE


def cmd_broker_config(args: argparse.Namespace) -> int:
    from controller.auth.acl import BrokerFiles, BrokerPolicy, mosquitto_config, write_broker_files
    from controller.auth.ca import CertificateAuthority, CertificateError, write_identity
    from controller.settings import BROKER_DELIVERY_LIMITS, load_settings

    try:
        settings = load_settings(args.config)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"edgefleet: bad controller settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pki = settings.enrollment.pki_dir or settings.data_dir / "pki"
    now = datetime.now(timezone.utc)
    policy = BrokerPolicy(
        prefix=settings.mqtt.topic_prefix,
        device_port=args.device_port,
        device_host=args.device_host,
        controller_port=args.controller_port,
        controller_host=args.controller_host,
        max_packet_size=args.max_packet_size,
    )
    files = BrokerFiles(args.out.resolve())
    # the controller connects to its own listener: by that listener's address when it binds
    # one (127.0.0.1 by default), so the server certificate must name that address too
    wildcard = policy.controller_host in ("0.0.0.0", "::", "")  # noqa: S104 - compared, not bound
    controller_host = args.hostname[0] if wildcard else policy.controller_host
    hostnames = list(dict.fromkeys([*args.hostname, controller_host]))
    try:
        fleet = CertificateAuthority.load_or_create(pki / "fleet")
        service = CertificateAuthority.load_or_create(pki / "service")
        # revocations already made: the controller rewrites this CRL at start and on revoke
        write_broker_files(files, policy, fleet, service, hostnames, [], now, args.owner)
        key, cert = write_identity(
            pki / "controller",
            "controller",
            service.issue_identity(policy.controller_identity, now),
        )
    except (OSError, KeyError, CertificateError) as exc:
        print(f"edgefleet: cannot write the broker files: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    conf = files.directory / "edgefleet.conf"
    # the same per-client memory bounds as the demo broker: a slow device costs a window of
    # bundle chunks, not the bundle
    conf.write_text("\n".join([mosquitto_config(policy, files), *BROKER_DELIVERY_LIMITS, ""]))
    advice = {
        "mosquitto_include": str(conf),
        "controller_settings": {
            "mqtt": {
                "host": controller_host,
                "port": policy.controller_port,
                "ca_file": str(files.fleet_ca),
                "cert_file": str(cert),
                "key_file": str(key),
            },
            "enrollment": {"broker_files_dir": str(files.directory)},
        },
        "device_port": policy.device_port,
    }
    sys.stdout.write(json.dumps(advice, indent=2) + "\n")
    return EXIT_OK


def add_broker_parser(subparsers: Any) -> None:
    """`broker config`."""
    parser = subparsers.add_parser("broker", help="the production broker's TLS and ACL files")
    sub = parser.add_subparsers(dest="broker_command", required=True)
    config = sub.add_parser("config", help="write mosquitto's TLS, ACL and revocation files")
    config.add_argument("--config", type=Path, default=None, help="controller settings file")
    config.add_argument("--out", type=Path, required=True, help="folder for the broker's files")
    config.add_argument(
        "--hostname",
        action="append",
        required=True,
        help="a name or address devices reach the broker by (repeat for more)",
    )
    config.add_argument("--device-port", type=int, default=8883)
    config.add_argument(
        "--device-host",
        default="0.0.0.0",  # noqa: S104 - the device listener is TLS with client certificates
        help="devices' listener address",
    )
    config.add_argument("--controller-port", type=int, default=8884)
    config.add_argument("--controller-host", default="127.0.0.1")
    config.add_argument("--max-packet-size", type=int, default=1 << 20)
    config.add_argument("--owner", default=None, help="give the files to this user (mosquitto)")
    config.set_defaults(func=cmd_broker_config)
