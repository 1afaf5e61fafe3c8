#!/usr/bin/env python3
"""Make the coordinator's key material: the federation's TLS CA, the SuperLink certificate and
the operator's app-signing key; optionally register sites' SuperNode public keys.

    python deploy/make_certs.py certs --name coordinator.example.org --ip 10.0.0.5
    python deploy/make_certs.py certs --register 127.0.0.1:9093 \
        --node-pub site-a.pub --node-pub site-b.pub     # after `synthlearn coordinator serve`

Writes certs/ca.crt (give to every site), certs/ca.key (keep offline), certs/server.pem and
certs/server.key (the SuperLink's and the Fleet proxy's), certs/app-signing (the operator's
Ed25519 key that signs every Flower app; never leaves the coordinator) and
certs/app-signing.pub (give to every site: `node join --app-key`).

SuperNode keys are NOT made here: each site makes its own (`synthlearn node join
--make-auth-key ...`) and sends only the `.pub`; --register registers those with the
SuperLink's Control API, which answers on the coordinator's loopback only (the address
`coordinator serve` prints as "Control API"). Uses only `cryptography`; nothing is downloaded
or contacted except the SuperLink named by --register.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the certificates and keys")
    parser.add_argument("--name", action="append", default=[],
                        help="DNS name SuperNodes use for the coordinator (repeatable)")
    parser.add_argument("--ip", action="append", default=[],
                        help="IP address SuperNodes use for the coordinator (repeatable)")
    parser.add_argument("--register", metavar="HOST:PORT",
                        help="register SuperNode public keys (--node-pub) with the SuperLink's "
                             "loopback Control API (TLS, verified with OUT/ca.crt)")
    parser.add_argument("--node-pub", action="append", default=[], type=Path,
                        help="a site's SuperNode public key (.pub, made at the site); "
                             "repeatable; with --register")
    parser.add_argument("--nodes", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.nodes is not None:
        print("--nodes is gone: sites make their own SuperNode keys (`synthlearn node join "
              "--make-auth-key ...`) and send only the .pub; register those with "
              "--register 127.0.0.1:PORT --node-pub SITE.pub", file=sys.stderr)
        return 2
    if args.register:
        from shared.flower_proc import register_supernode, write_connection

        if not args.node_pub:
            print("--register needs at least one --node-pub SITE.pub", file=sys.stderr)
            return 2
        home = args.out / "flwr-cli-home"
        write_connection(home, "federation", args.register, root_cert=args.out / "ca.crt")
        for pub in args.node_pub:
            try:
                text = pub.read_text(errors="replace")
            except OSError as exc:
                print(f"{pub}: cannot read it ({exc.strerror})", file=sys.stderr)
                return 2
            if not text.startswith("ecdsa-sha2-nistp384 "):
                print(f"{pub}: not a SuperNode public key (ecdsa-sha2-nistp384 ...)",
                      file=sys.stderr)
                return 2
            print(f"{pub}: registered as node {register_supernode(pub, 'federation', home)}")
        return 0

    from coordinator.certs import make_ca_and_server
    from shared.flower_keys import make_app_signing_key

    names = [*args.name, *args.ip] or ["localhost", "127.0.0.1"]
    if (args.out / "ca.key").exists():
        print(f"{args.out / 'ca.key'} exists; not overwriting the federation's CA",
              file=sys.stderr)
    else:
        paths = make_ca_and_server(args.out, names)
        print(f"CA {paths['ca_cert']}; SuperLink certificate for {', '.join(names)}")
    if (args.out / "app-signing").exists():
        print(f"{args.out / 'app-signing'} exists; kept")
    else:
        priv, pub = make_app_signing_key(args.out)
        print(f"app-signing key {priv} (stays here); {pub} (give to every site)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
