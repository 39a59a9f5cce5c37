"""The zoo's method x model table: every registered layer method on every zoo architecture.

Each cell runs `tests/zoo.py:run_cell` (apply, forward in eval and train mode, coverage
record, bit-exact save/load) and shows "ok (coverage %)" or the named refusal. Writes
bench/results/zoo.json and prints the markdown table.

    PYTHONPATH=src python bench/bench_zoo.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import zoo  # noqa: E402


def _cell(result: dict) -> str:
    if result["status"] == "ok":
        return f"ok ({result['coverage']:.0%})"
    if result["status"] == "refused":
        return f"refused: {result['message'].split(':')[0][:60]}"
    return f"FAILS: {result['message'][:60]}"


def main() -> None:
    torch.set_num_threads(1)
    models, methods = zoo.available(), list(zoo.ZOO_METHODS)
    results: dict[str, dict[str, dict]] = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            results[m] = {}
            for k in methods:
                try:
                    results[m][k] = zoo.run_cell(m, k, tmp)
                except Exception as e:  # a broken cell is a result to report, not a crash
                    results[m][k] = {"status": "error", "message": f"{type(e).__name__}: {e}"}
    out = {"models": models, "methods": methods, "results": results, "seconds": time.time() - start,
           "torch_threads": 1, "loadavg": os.getloadavg()}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "zoo.json").write_text(json.dumps(out, indent=1, default=str))
    print("| model | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for m in models:
        print(f"| {m} | " + " | ".join(_cell(results[m][k]) for k in methods) + " |")


if __name__ == "__main__":
    main()
