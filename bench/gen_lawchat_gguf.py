"""Write a GGUF of law-chat's real shape (Llama-2-7B, Q4_0, random weights).

    .venv/bin/python bench/gen_lawchat_gguf.py /tmp/law-chat-shaped.gguf [--layers 32] [--seed 0]

32 layers give 3.79 GB, the size of law-chat.Q4_0.gguf; fewer layers keep the width.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    make_lawchat_gguf(args.path, LawChatShape(n_layer=args.layers), seed=args.seed)
    size = args.path.stat().st_size
    print(f"{args.path}: {size} bytes in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
