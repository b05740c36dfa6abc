"""``urpo fit`` as a multi-machine job on Lightning's platform (``lightning-sdk``'s ``Job`` with ``num_machines``).

    python tools/lightning_job.py --config configs/qwen7b.yaml --num_machines 2 --machine H100_X_8   # prints the spec
    python tools/lightning_job.py --config configs/qwen7b.yaml --num_machines 2 --machine H100_X_8 --submit

The job runs the same command on every machine; the platform gives each one its rank and the address of machine 0
(``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``), which Lightning's Trainer picks up. The number of machines and the
GPUs per machine reach the config through ``PL_FIT__TRAINER__NUM_NODES`` / ``PL_FIT__TRAINER__DEVICES`` (see
``urpo.launch_env``), so the YAML stays the one used on a single node. Without ``--submit`` nothing is sent
anywhere: the keyword arguments of ``Job.run`` are printed. Submitting needs ``pip install lightning-sdk`` and a
logged-in Lightning account.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from typing import Any


def gpus_per_machine(machine: str) -> int:
    """GPUs of a Lightning machine name: 'H100_X_8' -> 8, 'A100_80GB_X_4' -> 4, 'L4' -> 1."""
    match = re.search(r"_X_(\d+)$", machine)
    return int(match.group(1)) if match else 1


def job_spec(
    config: str,
    num_machines: int,
    machine: str = "H100_X_8",
    name: str = "urpo-fit",
    studio: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``lightning_sdk.Job.run`` for ``urpo fit --config CONFIG`` on ``num_machines`` machines."""
    if num_machines < 1:
        raise ValueError(f"num_machines must be >= 1, got {num_machines}")
    command = shlex.join(["urpo", "fit", "--config", config, *(extra_args or [])])
    job_env = {
        "PL_FIT__TRAINER__NUM_NODES": str(num_machines),
        "PL_FIT__TRAINER__DEVICES": str(gpus_per_machine(machine)),
        "HF_HUB_OFFLINE": "1",  # pre-fetch models and datasets into the studio's cache once (docs/scaling.md)
        **(env or {}),
    }
    spec: dict[str, Any] = {
        "name": name,
        "machine": machine,
        "command": command,
        "num_machines": num_machines,
        "env": job_env,
    }
    if studio is not None:
        spec["studio"] = studio
    return spec


def submit(spec: dict[str, Any]) -> Any:
    """Submit the job (needs lightning-sdk and credentials)."""
    from lightning_sdk import Job, Machine

    return Job.run(**{**spec, "machine": getattr(Machine, spec["machine"])})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--num_machines", type=int, default=2)
    parser.add_argument("--machine", default="H100_X_8", help="a lightning_sdk.Machine name")
    parser.add_argument("--name", default="urpo-fit")
    parser.add_argument("--studio", default=None)
    parser.add_argument("--submit", action="store_true", help="send the job (default: only print it)")
    args, extra = parser.parse_known_args(argv)
    spec = job_spec(args.config, args.num_machines, args.machine, args.name, args.studio, extra)
    print(json.dumps(spec, indent=2))
    if args.submit:
        print(submit(spec))
    return spec


if __name__ == "__main__":
    main()
