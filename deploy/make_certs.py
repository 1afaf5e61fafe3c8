#!/usr/bin/env python3
"""Make the federation's TLS CA + SuperLink certificate and one auth key per SuperNode;
optionally register the SuperNodes' public keys with a running SuperLink.

    python deploy/make_certs.py certs --name coordinator.example.org --ip 10.0.0.5 \
        --nodes site-a site-b site-c
    python deploy/make_certs.py certs --register coordinator.example.org:9092 \
        --nodes site-a site-b site-c            # after `synthlearn coordinator serve`

Writes certs/ca.crt (give to every site), certs/ca.key (keep offline), certs/server.pem and
certs/server.key (the SuperLink's), certs/nodes/<site> (private, give to that site only) and
certs/nodes/<site>.pub (registered at the SuperLink). Uses only `cryptography`; nothing is
downloaded or contacted except the SuperLink named by --register.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the certificates and keys")
    parser.add_argument("--name", action="append", default=[],
                        help="DNS name SuperNodes use for the SuperLink (repeatable)")
    parser.add_argument("--ip", action="append", default=[],
                        help="IP address SuperNodes use for the SuperLink (repeatable)")
    parser.add_argument("--nodes", nargs="*", default=[], help="site pseudonyms")
    parser.add_argument("--register", metavar="HOST:PORT",
                        help="register the nodes' public keys with this SuperLink (TLS, "
                             "verified with OUT/ca.crt) instead of making certificates")
    args = parser.parse_args(argv)

    from coordinator.certs import make_ca_and_server, make_supernode_key

    if args.register:
        from shared.flower_proc import register_supernode, write_connection

        home = args.out / "flwr-cli-home"
        write_connection(home, "federation", args.register, root_cert=args.out / "ca.crt")
        for node in args.nodes:
            pub = args.out / "nodes" / f"{node}.pub"
            print(f"{node}: registered as node {register_supernode(pub, 'federation', home)}")
        return 0
    names = [*args.name, *args.ip] or ["localhost", "127.0.0.1"]
    if (args.out / "ca.key").exists():
        print(f"{args.out / 'ca.key'} exists; not overwriting the federation's CA",
              file=sys.stderr)
    else:
        paths = make_ca_and_server(args.out, names)
        print(f"CA {paths['ca_cert']}; SuperLink certificate for {', '.join(names)}")
    for node in args.nodes:
        if (args.out / "nodes" / node).exists():
            print(f"{node}: key exists, kept")
            continue
        priv, pub = make_supernode_key(args.out / "nodes", node)
        print(f"{node}: {priv} (give to the site only), {pub} (register)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
