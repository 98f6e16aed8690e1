#!/usr/bin/env bash
# CI: the wheel installed three ways, each into a plain venv (no --system-site-packages, so the machine's own torch
# and jax stay out of sight), and run from outside the checkout:
#   base:  pip install fashion-twins          -> each twin's command names the extra it needs, one line, exit 2
#   jax:   pip install 'fashion-twins[jax]'   -> torch is not importable; flax and nnx train; torch's commands name
#                                                [torch], compare names [all]
#   torch: pip install 'fashion-twins[torch]' -> jax is not importable; torch trains, convert writes a .pth the
#                                                tutorial loads; flax's commands name [jax], compare names [all]
# and prints each install's size (du of its site-packages, less pip itself) for the README's install section.
#
# pip resolves from its configured indexes (here PyPI and this machine's local wheel indexes). A fresh torch venv
# copies ~5.6 GB: on the busy 2-core box the whole script took ~8 minutes. CI_INSTALLS_CACHE=DIR keeps the venvs in
# DIR/<install>-<hash of the wheel's requirements for it and the Python version>, so a later run with the same
# requirements only reinstalls the project (pip still resolves the extra every time; a changed requirement gets a
# new venv), and the checks run as before.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1  # the dry runs are checks, not timings; one thread leaves the shared cores to others

python3 -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w "$WORK/dist" "$ROOT" \
  || python3 -m pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/fashion_twins-*.whl)

requirements_hash() {  # the wheel's Requires-Dist lines that install `$1` pulls in, and the Python version
  python3 - "$WHEEL" "$1" <<'PY'
import hashlib, re, sys, zipfile
wheel, extra = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)
meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
lines = [l for l in meta.splitlines() if l.startswith("Requires-Dist:")]
wanted = {"base": set(), "jax": {"jax"}, "torch": {"torch"}}[extra]
keep = [l for l in lines if "extra ==" not in l or any(f'extra == "{e}"' in l for e in wanted)]
print(hashlib.sha256("\n".join(keep + [sys.version]).encode()).hexdigest()[:16])
PY
}

pip_install() {  # quiet pip, less this machine's notes about local index entries that are absent
  local py=$1
  shift
  if ! "$py" -m pip install -q --disable-pip-version-check "$@" >&2 2>"$WORK/pip.err"; then
    cat "$WORK/pip.err" >&2
    return 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$WORK/pip.err" >&2 || true
}

make_venv() {  # make_venv base|jax|torch -> prints the venv's folder, with the wheel (and extra) installed
  local name=$1 venv spec
  if [ -n "${CI_INSTALLS_CACHE:-}" ]; then
    venv="$CI_INSTALLS_CACHE/$name-$(requirements_hash "$name")"
  else
    venv="$WORK/venv-$name"
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  spec="$WHEEL"
  [ "$name" = base ] || spec="$WHEEL[$name]"
  pip_install "$venv/bin/python" "$spec"
  pip_install "$venv/bin/python" --no-deps --force-reinstall "$WHEEL"  # this build, even where one is installed
  echo "$venv"
}

fails_naming() {  # fails_naming EXTRA MODULE ARGS...: exit 2 and exactly one stderr line naming the extra
  local extra=$1 module=$2
  shift 2
  local code=0
  "$VENV/bin/fashion-twins" "$@" >"$WORK/out" 2>"$WORK/err" || code=$?
  local lines
  lines=$(wc -l <"$WORK/err")
  if [ "$code" != 2 ] || [ "$lines" != 1 ] \
    || ! grep -q "^error: .* needs $module, which is not installed: pip install 'fashion-twins\[$extra\]'$" "$WORK/err"; then
    echo "ci_installs: fashion-twins $* in the $NAME install: exit $code, expected 2 and one line naming [$extra]:" >&2
    cat "$WORK/err" >&2
    exit 1
  fi
  echo "  $NAME: fashion-twins $* -> $(cat "$WORK/err")"
}

not_importable() {  # not_importable MODULE...: none of them can be imported in $VENV
  "$VENV/bin/python" - "$@" <<'PY'
import importlib.util, sys
found = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]
if found:
    sys.exit(f"ci_installs: {', '.join(found)} importable in an install that must not hold it")
PY
}

site_mb() {  # the venv's site-packages in MB, less pip and setuptools (every venv has them)
  local site
  site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  python3 - "$site" <<'PY'
import os, sys
site, total = sys.argv[1], 0
for entry in os.scandir(site):
    if entry.name.split("-")[0].split(".")[0].lower() in ("pip", "setuptools", "_distutils_hack", "distutils"):
        continue
    paths = [entry.path] if entry.is_file(follow_symlinks=False) else [
        os.path.join(d, f) for d, _, fs in os.walk(entry.path) for f in fs]
    total += sum(os.lstat(p).st_size for p in paths)
print(round(total / 1e6))
PY
}

cd "$WORK"  # outside the checkout: nothing may come from $ROOT
SIZES=""

# ---- base: no framework at all
NAME=base
VENV=$(make_venv base)
not_importable torch torchvision jax jaxlib flax optax
"$VENV/bin/fashion-twins" --help >/dev/null
fails_naming torch torch train --backend torch --dry-run --out "$WORK/b.safetensors"
fails_naming jax jax train --backend flax --dry-run --out "$WORK/b.safetensors"
SIZES+="base $(site_mb) MB; "

# ---- jax: the Flax twins without torch
NAME=jax
VENV=$(make_venv jax)
not_importable torch torchvision
for backend in flax nnx; do
  "$VENV/bin/fashion-twins" train --backend "$backend" --dry-run --quiet --out "$WORK/$backend.safetensors"
done
"$VENV/bin/fashion-twins" evaluate --backend nnx "$WORK/flax.safetensors" --limit-test 512
fails_naming torch torch train --backend torch --dry-run --out "$WORK/t.safetensors"
fails_naming all torch compare --dry-run --out-dir "$WORK/report"
fails_naming torch torch convert "$WORK/flax.safetensors" "$WORK/flax.pth"
SIZES+="jax $(site_mb) MB; "

# ---- torch: the torch twin without JAX
NAME=torch
VENV=$(make_venv torch)
not_importable jax jaxlib flax optax
"$VENV/bin/fashion-twins" train --backend torch --dry-run --quiet --out "$WORK/torch.safetensors"
"$VENV/bin/fashion-twins" convert "$WORK/torch.safetensors" "$WORK/torch.pth"
"$VENV/bin/python" - "$WORK/torch.pth" <<'PY'
import sys, torch
from torch import nn
class NeuralNetwork(nn.Module):  # the tutorial's class
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
NeuralNetwork().load_state_dict(torch.load(sys.argv[1], weights_only=True), strict=True)
PY
fails_naming jax jax train --backend flax --dry-run --out "$WORK/f.safetensors"
fails_naming jax jax evaluate --backend nnx "$WORK/torch.safetensors"
fails_naming all jax compare --dry-run --out-dir "$WORK/report"
SIZES+="torch $(site_mb) MB"

echo "ci_installs: ok in $((SECONDS - START))s; installed sizes (site-packages less pip): $SIZES"
