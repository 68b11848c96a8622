"""A child for the sampler tests: hold MB of resident memory, optionally burn CPU, optionally fork.

Usage: ``python hog.py MB [--burn] [--children N] [--child-mb MB]``. Prints ``ready`` once
everything is allocated (children included), then runs until killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def hold(mb: float) -> bytes:
    return b"\x01" * int(mb * 1024 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mb", type=float)
    parser.add_argument("--burn", action="store_true")
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--child-mb", type=float, default=0)
    args = parser.parse_args()
    kids = []
    for _ in range(args.children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _block = hold(args.child_mb)
            os.write(write_end, b"k")
            while True:
                time.sleep(60)
        os.close(write_end)
        os.read(read_end, 1)  # the child has allocated
        os.close(read_end)
        kids.append(pid)
    _block = hold(args.mb)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        if args.burn:
            end = time.monotonic() + 1
            while time.monotonic() < end:
                pass
        else:
            time.sleep(60)


if __name__ == "__main__":
    main()
