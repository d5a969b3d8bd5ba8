"""Per-file job (on_file): record an arrived image's size, SHA-256 and, for JPEG/PNG, its pixel
size in a JSON-lines ledger. Cheap, real, and safe with any file name:

    run: ["{python}", jobs/checksum_image.py, --ledger, data/checksums.jsonl, --, "{file.path}"]

`--` ends the options, so a file named `-rf` or `--ledger=x` is an operand, never an option."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import struct
import sys


def pixel_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head.startswith(b"\xff\xd8"):  # JPEG: walk the segments to the first start-of-frame
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                return None
            marker, length = head[i + 1], struct.unpack(">H", head[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", head[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("file")
    args = parser.parse_args()
    path = os.fsencode(args.file)  # the exact bytes the runner passed (non-UTF-8 names too)
    digest = hashlib.sha256()
    head = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            head = head or chunk[:65536]
            digest.update(chunk)
    dims = pixel_size(head)
    entry = {"path_b64": base64.b64encode(path).decode(), "path": path.decode("utf-8", "replace"),
             "size": os.path.getsize(path), "sha256": digest.hexdigest(),
             "pixels": list(dims) if dims else None, "run_id": os.environ.get("CROPCRON_RUN_ID")}
    os.makedirs(os.path.dirname(os.path.abspath(args.ledger)), exist_ok=True)
    with open(args.ledger, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
    print(f"{entry['sha256']}  {entry['size']} bytes  {entry['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
