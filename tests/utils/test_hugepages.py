import os
import subprocess
import sys
import textwrap

import pytest

from nas_jax.utils import hugepages
from nas_jax.utils.hugepages import huge_pages_environment

LINUX = {"platform_name": "linux", "glibc": (2, 36), "mode": "madvise"}


def test_environment_adds_the_tunable_and_keeps_the_rest():
    env = huge_pages_environment({"PATH": "/bin"}, **LINUX)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages_environment({}, **{**LINUX, "mode": "always"}) is not None


@pytest.mark.parametrize("environ, overrides", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, {}),  # already set: no restart loop
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # the user chose otherwise
    ({"NAS_JAX_HUGEPAGES": "0"}, {}),  # turned off
    ({}, {"platform_name": "darwin"}),
    ({}, {"glibc": (2, 34)}),  # before the tunable existed
    ({}, {"mode": "never"}),
])
def test_environment_is_left_alone(environ, overrides):
    assert huge_pages_environment(environ, **{**LINUX, **overrides}) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(path)) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


def test_a_script_restarts_once_with_the_tunable(tmp_path):
    if huge_pages_environment({}) is None:
        pytest.skip("this machine has no glibc >= 2.35 with transparent huge pages")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        if __name__ == "__main__":
            from nas_jax.utils.hugepages import reexec_with_huge_pages
            print("start", flush=True)
            reexec_with_huge_pages()
            print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NAS_JAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-u", str(script), "--a=1", "b c"], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # Printed "start" twice (before and after the restart), then the arguments unchanged.
    assert out == ["start", "start", "glibc.malloc.hugetlb=1 ['--a=1', 'b c']"]
