#!/usr/bin/env bash
# `make lock`: resolve every environment the project installs into locks/*.txt, with exact versions and
# sha256 hashes, for every platform at once (uv's universal resolution: Linux x86-64 and aarch64, macOS arm64,
# Python 3.11 and newer). Installs (`make install`, `make serve`, the images, CI) read only these files.
#
#   serve   .venv-serve, the serving image       client  a program that only calls a server
#   load    the Locust image (serve + load)      train   the training image (torch apart, below)
#   dev     .venv: every extra (make install)    tools   .venv-tools (checkov)
#
# torch (train, dev) is the CPU build: on Linux PyTorch's +cpu wheels (locks/torch.in), which PyPI does not
# have. pip downloads them from TORCH_INDEX (or takes them from its find-links) for each platform and Python
# the lock promises, and uv records the hash of each one it was given; the script names any it could not get.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-.venv/bin/uv}"
PYTHON="${PYTHON:-.venv/bin/python}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_VERSION=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
[ -n "$TORCH_VERSION" ] || { echo "make lock: no torch== pin in pyproject.toml" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s/@TORCH_VERSION@/$TORCH_VERSION/" locks/torch.in >"$tmp/torch.in"
mkdir "$tmp/wheels"
missing=()
covered=()
elsewhere=()
for py in 3.11 3.12; do
  for arch in x86_64 aarch64; do
    if "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$py" \
      --platform "manylinux_2_28_$arch" --dest "$tmp/wheels" --extra-index-url "$TORCH_INDEX" \
      "torch==$TORCH_VERSION+cpu" >/dev/null 2>&1; then
      covered+=("(platform_machine == '$arch' and python_version == '$py')")
      elsewhere+=("(platform_machine != '$arch' or python_version != '$py')")  # markers have no `not`
    else
      missing+=("CPython $py on Linux $arch")
    fi
  done
done
if ((${#missing[@]} == 4)); then
  echo "make lock: no torch $TORCH_VERSION+cpu wheel from $TORCH_INDEX or pip's find-links" >&2
  exit 2
fi
for m in "${missing[@]}"; do
  echo "make lock: warning: no torch $TORCH_VERSION+cpu wheel for $m: its hash is not in the lock" >&2
done

common=(--universal --generate-hashes --python-version 3.11 --custom-compile-command "make lock" --quiet
        --override "$tmp/torch.in" --find-links "$tmp/wheels" --index-strategy unsafe-best-match)
compile() {
  local name=$1
  shift
  "$UV" pip compile "${common[@]}" "$@" -o "locks/$name.txt"
  sed -i "s|$tmp/torch.in|locks/torch.in|g" "locks/$name.txt"
  echo "locks/$name.txt: $(grep -c '^[a-z0-9]' "locks/$name.txt") packages"
}
compile serve pyproject.toml locks/build.in --extra serve
compile client pyproject.toml locks/build.in --extra client
compile load pyproject.toml locks/build.in --extra serve --extra load
compile train pyproject.toml locks/build.in --extra train
compile dev pyproject.toml locks/build.in --extra serve --extra train --extra load --extra dev
compile tools locks/tools.in locks/build.in

# torch alone, as the train and dev locks pin it: installed first, by itself, with PyTorch's index, so that
# pip asks that index for torch only (a machine that cannot reach it would retry it for every package). Where
# the lock has no hash of the Linux wheel (the warnings above), the exact version is installed unchecked; pip
# checks the hash wherever the lock has one.
{
  echo "# torch as locks/train.txt and locks/dev.txt pin it (written by make lock): installed first, alone."
  awk '/^torch==/ {keep = 1; print; next} /^[a-z0-9]/ {keep = 0} keep' locks/train.txt
} >locks/torch.txt
if ((${#missing[@]})); then
  cover=$(printf ' or %s' "${covered[@]}")
  cover=${cover# or }
  rest=$(printf ' and %s' "${elsewhere[@]}")
  awk -v pin="torch==$TORCH_VERSION+cpu ; sys_platform == 'linux' \\" -v cover="$cover" \
    '$0 == pin {print substr($0, 1, length($0) - 2) " and (" cover ") \\"; next} {print}' \
    locks/torch.txt >"$tmp/torch.txt"
  mv "$tmp/torch.txt" locks/torch.txt
  printf '%s\n' "# Linux platforms whose +cpu wheel make lock could not hash: the exact version, unchecked." \
    "torch==$TORCH_VERSION+cpu ; sys_platform == 'linux'$rest" >>locks/torch.txt
fi
echo "locks/torch.txt: $(grep -c '^torch==' locks/torch.txt) entries"
