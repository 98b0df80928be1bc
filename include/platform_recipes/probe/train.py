"""Probe entrypoint: behaves as params.json's hyperparameters say (reads no data, needs no packages)."""
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def finish(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"test_accuracy": 1.0, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0))})
    (out / "metrics.json").write_text(data)
    marker = {"files": {"metrics.json": {"sha256": hashlib.sha256(data.encode()).hexdigest(), "bytes": len(data)}},
              "metrics": json.loads(data)}
    (out / "_COMPLETED.json").write_text(json.dumps(marker))


def main() -> int:
    params = json.loads(Path(sys.argv[sys.argv.index("--params") + 1]).read_text())
    hp, out = params["hyperparameters"], Path(params["output_dir"])
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    print(f"probe: mode={hp['mode']} restart_count={restarts} node={os.environ.get('SLURMD_NODENAME')}", flush=True)
    mode = hp["mode"]
    if mode == "ok":
        finish(out)
    elif mode == "fail":
        print("probe: failing on purpose", file=sys.stderr, flush=True)
        return int(hp.get("exit_code", 3))
    elif mode == "sleep":
        time.sleep(float(hp.get("seconds", 0)))
        finish(out)
    elif mode == "sleep_then_ok":  # sleeps on the first run only: a requeued run completes at once
        if restarts == 0:
            time.sleep(float(hp.get("seconds", 0)))
        finish(out)
    elif mode == "oom":
        hog = bytearray(3 * 1024**3)  # 3 GiB against --mem=1G
        hog[:: 4096] = b"1" * len(hog[:: 4096])
        time.sleep(float(hp.get("seconds", 30)))
        finish(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
