"""Stand-in for ``bayling_duplex.train`` in the launch tests: join the process group, report.

``python -m launch_probe STAGE [overrides]`` under a torch launcher: initialises
``torch.distributed`` (gloo) from the launcher's environment, all-reduces its rank
and writes what it saw to ``$PROBE_OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def main() -> None:
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)
    seen = {k: os.environ.get(k) for k in KEYS}
    seen |= {"rank_sum": total.item(), "argv": sys.argv[1:]}
    Path(os.environ["PROBE_OUT"], f"rank{dist.get_rank()}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
