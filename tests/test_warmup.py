"""`python -m engine.warmup` leaves nothing for a user's first run to compile: after it, a new
process reducing a night finds every kernel it calls in Numba's cache."""

import json
import os
import subprocess
import sys

import pytest

# In a fresh process: the demo on the tiny night, then every engine kernel's Numba statistics
# (a signature compiled in this process is a cache miss; one loaded from disk, a hit).
_FIRST_RUN = r"""
import json, sys, tempfile
import numba
from engine.demo import run_demo
from engine.progress import quiet

with quiet():
    run_demo(tempfile.mkdtemp(), preset="tiny", echo=lambda *args: None)
hits, misses = 0, []
for name, module in list(sys.modules.items()):
    if not name.startswith("engine.") or module is None:
        continue
    for value in vars(module).values():
        if isinstance(value, numba.core.registry.CPUDispatcher):
            stats = value.stats
            hits += sum(stats.cache_hits.values())
            misses += [f"{name}.{value.__name__}{sig}" for sig in stats.cache_misses]
print(json.dumps({"hits": hits, "misses": sorted(set(misses))}))
"""


def _child(code_or_module, cache_dir, tmp_path, *args):
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), ENGINE_PROGRESS="0")
    return subprocess.run([sys.executable, *args, code_or_module], cwd=tmp_path, check=False,
                          env=environment, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_first_run_after_warmup_compiles_nothing(tmp_path):
    cache = tmp_path / "numba-cache"
    warm = _child("engine.warmup", cache, tmp_path, "-m")
    assert warm.returncode == 0, warm.stderr
    assert "compiled and cached" in warm.stdout
    assert any(cache.rglob("*.nbi")), "no Numba cache index was written"

    first = _child(_FIRST_RUN, cache, tmp_path, "-c")
    assert first.returncode == 0, first.stderr
    stats = json.loads(first.stdout.strip().splitlines()[-1])
    assert stats["hits"] > 10  # the kernels ran, from the cache
    assert stats["misses"] == []
