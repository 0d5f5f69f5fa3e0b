"""Strip a serving virtual environment of what it never runs: packaging tools, test suites, unused tooling.

Used by deploy/Dockerfile's serving stage and by tests/deploy/test_serve_env.py on the same kind of
environment, so the size the test records is the image's, and the test's server runs from the stripped
environment (proving nothing it needs went with it). Standard library only: it runs before anything else
is installed and after pip is gone.

    python deploy/slim_venv.py /opt/venv
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# Installed by `python -m venv` and pip, needed only to install more packages (the image never does).
PACKAGING_TOOLS = ("pip", "setuptools", "pkg_resources", "_distutils_hack")
PACKAGING_FILES = ("distutils-precedence.pth",)
# Third-party test suites (numpy's alone is 16 MB); `numpy.testing`, a runtime module, is not among them.
TEST_DIRS = ("tests",)
# Parts of packages the server never imports: ONNX Runtime's model-conversion and quantization tooling
# (9 MB of Python; int8 artifacts are quantized offline by `charrnn quantize`, with the train extra).
UNUSED_PARTS = ("onnxruntime/transformers", "onnxruntime/quantization", "onnxruntime/tools")


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"{venv}: expected one lib/python3*/site-packages, found {found}")
    return found[0]


def slim(venv: Path) -> int:
    """Remove the packaging tools and test suites; return the bytes freed."""
    root = site_packages(venv)
    doomed: list[Path] = []
    for name in PACKAGING_TOOLS:
        doomed += [root / name, *root.glob(f"{name}-*.dist-info")]
    doomed += [root / name for name in PACKAGING_FILES]
    doomed += [p for name in TEST_DIRS for p in root.glob(f"*/**/{name}") if p.is_dir()]
    doomed += [root / part for part in UNUSED_PARTS]
    doomed += [p for p in (venv / "bin").glob("pip*")]
    freed = 0
    for path in doomed:
        if not path.exists():
            continue
        if path.is_dir():
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(path)
        else:
            freed += path.stat().st_size
            path.unlink()
    return freed


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    freed = slim(Path(argv[0]))
    print(f"slim_venv: freed {freed / 1e6:.1f} MB from {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
