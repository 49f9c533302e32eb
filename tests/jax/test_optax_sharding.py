"""Sharded parameters (NamedSharding over 8 forced CPU devices) keep their sharding through
the update, and the result equals the single-device run (global_clipnorm is the true global
norm). Runs in a subprocess: XLA_FLAGS must be set before JAX initialises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "sharded_run.py"


def test_sharded_matches_unsharded():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("sharded vs unsharded:", report)
    Path("/tmp/kerasopt_optax_sharding.json").write_text(json.dumps(report, indent=1))
    for algo, r in report.items():
        assert r["sharding_kept"], (algo, r)
        assert r["shards"]["kernel"] == 8 and r["shards"]["emb"] == 8
        # Only the order of the global-norm reduction may differ: rounding level.
        assert r["max_abs_diff"] <= 1e-6 + 1e-5 * r["max_abs_travel"], (algo, r)
