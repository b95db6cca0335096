"""keep_freed_memory: large blocks stop being mmapped (so freed memory is reused), and the user's MALLOC_* wins."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings exist only in glibc")

PROBE = """
import numpy as np
from diffiml_cli.allocator import keep_freed_memory, mmapped_blocks

def mmaps_for_a_large_block():
    before = mmapped_blocks()
    block = np.ones(64 << 20, np.uint8)  # 64 MiB, above glibc's largest mmap threshold
    return mmapped_blocks() - before

print(mmaps_for_a_large_block(), keep_freed_memory(), mmaps_for_a_large_block())
"""


def _probe(env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


def test_large_blocks_come_from_the_reused_heap_once_applied():
    assert _probe(_clean_env()) == ["1", "True", "0"]


def test_a_users_malloc_tunable_is_left_alone():
    env = _clean_env() | {"MALLOC_ARENA_MAX": "4"}
    assert _probe(env) == ["1", "False", "1"]
