"""tv_lens as a release: `python -m build` gives an sdist and a wheel that twine accepts, and the wheel works installed
in a fresh venv outside the checkout, by pip or by the notebooks' Colab cell.

The fresh venvs do not download tv_lens's dependencies (torch alone is gigabytes): a ``.pth`` file lets them see this
environment's installed packages, through a folder of links that leaves out this environment's own (editable)
tv_lens, so tv_lens can only come from the fresh venv (the checks assert it). Everything runs outside the checkout,
and nothing is written into it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

import tv_lens

pytestmark = pytest.mark.once_per_ci

ROOT = Path(__file__).resolve().parents[1]
# Not source: version control, environments, caches, build and demo outputs.
NOT_SOURCE = (".git", ".venv*", "*_cache", ".hypothesis", "__pycache__", "*.egg-info", "build", "dist", "site", "runs")
NOT_SOURCE += ("tv_lens_out", "tv-lens-*")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PIP_NO_INPUT": "1"}
ENV.pop("PYTHONPATH", None)
OFFLINE = {**ENV, "PIP_NO_INDEX": "1"}  # pip in the fresh venvs: nothing downloaded, dependencies as installed here


def run(command: list, cwd: Path, env: dict[str, str] = OFFLINE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    """The sdist and wheel `python -m build` makes from a copy of the checkout (nothing is written into it)."""
    base = tmp_path_factory.mktemp("release")
    shutil.copytree(ROOT, base / "source", ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    # Without build isolation (the dev extra brings setuptools), so that it needs no download and takes seconds.
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", base / "dist", base / "source"]
    build = run(command, cwd=base, env=ENV)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    sdists, wheels = sorted((base / "dist").glob("*.tar.gz")), sorted((base / "dist").glob("*.whl"))
    assert len(sdists) == len(wheels) == 1 and len(list((base / "dist").iterdir())) == 2
    return {"sdist": sdists[0], "wheel": wheels[0]}


def fresh_venv(path: Path) -> Path:
    """A new venv at ``path`` that sees this environment's packages except tv_lens; returns its python."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path).stdout.strip()
    view = path.with_name(f"{path.name}-outer-site-packages")  # outside the venv: nothing in it counts as installed
    view.mkdir()
    outer = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for entry in sorted(entry for directory in outer for entry in directory.iterdir()):
        name = entry.name.lower()
        if not (name.startswith(("tv_lens", "__editable__")) or name.endswith(".pth") or (view / entry.name).exists()):
            (view / entry.name).symlink_to(entry)
    Path(site, "outer-environment.pth").write_text(f"{view}\n")
    return python


@pytest.fixture(scope="module")
def installed(artefacts, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed by pip (its dependencies seen, not installed); returns its bin/."""
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    install = run([python, "-m", "pip", "install", "--no-deps", "--no-index", artefacts["wheel"]], cwd=python.parent)
    assert install.returncode == 0, install.stdout + install.stderr
    return python.parent


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def test_version_is_set_in_one_place_and_the_changelog_starts_with_it():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*['\"]", pyproject, flags=re.M), "the version is tv_lens.__version__ only"
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.M)
    assert re.search(r'^version = \{ attr = "tv_lens.__version__" \}$', pyproject, flags=re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", tv_lens.__version__)
    releases = re.findall(r"^## (\S+) \(\d{4}-\d{2}-\d{2}\)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert releases and releases[0] == tv_lens.__version__, "CHANGELOG.md starts with the current release"


def test_sdist_and_wheel_pass_twine_check(artefacts):
    assert wheel_version(artefacts["wheel"]) == tv_lens.__version__
    assert artefacts["sdist"].name == f"tv_lens-{tv_lens.__version__}.tar.gz"
    check = run([sys.executable, "-m", "twine", "check", "--strict", *artefacts.values()], cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout


def test_wheel_holds_every_file_of_the_package_and_the_command(artefacts):
    with zipfile.ZipFile(artefacts["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"tv_lens-{tv_lens.__version__}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    package = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tv_lens").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert package <= names, f"not in the wheel: {sorted(package - names)}"  # code and any data files it reads
    assert {name.split("/")[0] for name in names} == {"tv_lens", info}  # no tests, demos or docs
    assert re.search(r"^tv-lens = tv_lens\.app\.cli:main$", entry_points, flags=re.M)


ANALYSIS = """
import importlib.metadata, tempfile
import torch
import tv_lens
from tv_lens import ModelConfig, Result, TaskDecodability, build_model, offset_pool

print(tv_lens.__file__)
print(tv_lens.__version__, importlib.metadata.version("tv_lens"))
torch.manual_seed(0)
pool = offset_pool(offsets=(1, 3), n_values=8)
model = build_model(ModelConfig(d_vocab=pool.vocab_size, n_layers=2, d_model=32, n_heads=4, n_ctx=32))
td = TaskDecodability(n_bootstrap=50).run(model, pool, n_per_task=12, n_shots=4)
with tempfile.TemporaryDirectory() as directory:
    assert Result.load(td.save(directory + "/td.safetensors")) == td
assert "Plotly.newPlot" in td.figure().to_html(include_plotlyjs=False)
print(*td.layers)
"""


def test_installed_wheel_is_imported_from_its_venv_and_runs_an_analysis(installed, artefacts, tmp_path):
    result = run([installed / "python", "-c", ANALYSIS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    location, versions, layers = result.stdout.strip().split("\n")[-3:]
    assert Path(location).is_relative_to(installed.parent) and not Path(location).is_relative_to(ROOT)
    assert versions.split() == [wheel_version(artefacts["wheel"])] * 2
    assert layers.split() == ["-1", "0", "1"]


def test_installed_command_runs_the_quick_demo(installed, quick_demo, tmp_path):
    help_text = run([installed / "tv-lens", "--help"], cwd=tmp_path)
    assert help_text.returncode == 0 and all(name in help_text.stdout for name in ("demo", "analyze", "report"))
    out = tmp_path / "demo"
    # the model the session's quick demo trained (training itself is tested there): this one loads and analyses it
    shutil.copytree(quick_demo["out"] / "checkpoints", out / "checkpoints")
    shutil.copy(quick_demo["out"] / "run.json", out)
    command = [installed / "tv-lens", "demo", "--quick", "--only", "decodability", "--no-progress", "--out", out]
    demo = run(command, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (out / "results" / "decodability.safetensors").is_file() and (out / "summary.json").is_file()
    report = (out / "report.html").read_text(encoding="utf-8")
    bundle = get_plotlyjs()
    rest = report.replace(bundle, "")
    assert report.count(bundle) == 1 and "Plotly.newPlot" in rest and "<script src" not in rest  # works offline


def colab_cell(source: str = "") -> str:
    """README.md's Colab install cell (every notebook's first cell), with ``TV_LENS_SOURCE`` set to ``source``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    [cell] = [block for block in blocks if 'TV_LENS_SOURCE = ""' in block]
    assert cell.count('TV_LENS_SOURCE = ""\n') == 1
    return cell.replace('TV_LENS_SOURCE = ""\n', f"TV_LENS_SOURCE = {source!r}\n")


# Runs a cell as a notebook's first cell, on Colab (google.colab imported) or not; with "dry", pip is not run but
# its command printed. Then says where tv_lens would be imported from, and its installed version.
RUN_CELL = """
import importlib.metadata, importlib.util, pathlib, subprocess, sys, types
cell, where, dry = sys.argv[1:]
if where == "colab":
    sys.modules["google.colab"] = types.ModuleType("google.colab")
if dry == "dry":
    subprocess.run = lambda command, **kwargs: print("RUN", *command[1:])
exec(compile(pathlib.Path(cell).read_text(), "colab_cell", "exec"), {"__name__": "__main__"})
if dry != "dry":
    print(importlib.util.find_spec("tv_lens").origin, importlib.metadata.version("tv_lens"))
"""


def run_cell(python: Path, cell: str, cwd: Path, where: str = "colab", dry: str = "") -> subprocess.CompletedProcess:
    path = cwd.parent / "cell.py"
    path.write_text(cell)
    return run([python, "-c", RUN_CELL, path, where, dry or "install"], cwd=cwd)


def test_colab_cell_installs_the_wheel_it_is_given(artefacts, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    content = tmp_path / "content"  # the Colab session's files
    content.mkdir()
    missing = run_cell(python, colab_cell(), content)  # nothing set, nothing uploaded: it says what to set
    assert missing.returncode != 0 and "set TV_LENS_SOURCE at the top of this cell" in missing.stderr
    outside = run_cell(python, colab_cell(), content, where="local")
    assert outside.returncode != 0 and "ModuleNotFoundError: tv_lens is not installed" in outside.stderr
    shutil.copy(artefacts["wheel"], content)  # uploaded: on Colab, the cell installs it when TV_LENS_SOURCE is empty
    uploaded = run_cell(python, colab_cell(), content, dry="dry")
    wheel = (content / artefacts["wheel"].name).resolve()
    assert uploaded.returncode == 0 and uploaded.stdout.split() == ["RUN", "-m", "pip", "install", "-q", str(wheel)]
    installed = run_cell(python, colab_cell(str(artefacts["wheel"])), content)  # pip resolves tv_lens's dependencies
    assert installed.returncode == 0, installed.stdout + installed.stderr
    location, version = installed.stdout.split()[-2:]
    assert Path(location).is_relative_to(tmp_path / "venv") and version == tv_lens.__version__
    again = run_cell(python, colab_cell(str(tmp_path / "no-such.whl")), content)  # installed already: pip not run
    assert again.returncode == 0, again.stderr
