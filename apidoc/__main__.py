"""``python -m apidoc`` writes gateway/openapi.json; ``--check`` only compares."""

from __future__ import annotations

import argparse
import sys

from apidoc.document import DOCUMENT_FILE, is_current, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apidoc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            return 0
        print(f"{DOCUMENT_FILE} is stale: run `python -m apidoc`", file=sys.stderr)
        return 1
    DOCUMENT_FILE.write_bytes(render())
    print(f"wrote {DOCUMENT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
