"""`guetteur centre key generate FILE | public FILE`: the centre's Ed25519 signing key.

``generate`` writes a new private key (mode 0600, never overwrites) and prints its public key;
``public`` prints the public key of a private key file: provision it on the gateways (beside the
update key; they trust several during a rotation) and give it to whoever verifies extractions.
"""

from __future__ import annotations

import argparse
import sys

from guetteur import keyfiles
from guetteur.uplink.command_auth import key_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("generate", "public"), help="make a key, or show one")
    parser.add_argument("file", help="the private key file (PEM)")


def run(args: argparse.Namespace) -> int:
    try:
        key = (
            keyfiles.generate(args.file)
            if args.action == "generate"
            else keyfiles.load_private(args.file)
        )
    except FileExistsError:
        print(f"key: {args.file} exists; not overwritten", file=sys.stderr)
        return 2
    except (keyfiles.KeyFileError, OSError) as exc:
        print(f"key: {exc}", file=sys.stderr)
        return 2
    public = key.public_key()
    print(keyfiles.public_pem(public).decode(), end="")
    print(f"key id: {key_id(public)}", file=sys.stderr)
    return 0
