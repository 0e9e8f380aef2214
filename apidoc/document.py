"""The committed document: where it lives and how its bytes are rendered."""

from __future__ import annotations

import json
from pathlib import Path

from apidoc.openapi import build_document

# Beside the gateway, which serves it; the gateway reads it with no import of this package.
DOCUMENT_FILE = Path(__file__).resolve().parent.parent / "gateway" / "openapi.json"


def render() -> bytes:
    """The document as committed: stable key order and indentation, so diffs read well."""
    return (json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n").encode()


def is_current() -> bool:
    """Whether the committed file equals what the operations table renders now."""
    return DOCUMENT_FILE.is_file() and DOCUMENT_FILE.read_bytes() == render()
