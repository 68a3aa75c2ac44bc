"""The wheel, what a non-editable install unpacks: besides the modules it must carry every file the package reads at
run time (the web page, the built-in datasets and their licences) and py.typed, which an editable install finds in
src/ without them."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_the_wheel_carries_every_file_of_the_package(tmp_path):
    source = tmp_path / "source"  # a copy: no build/ left by an earlier build can slip files in
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("pixeldiffusion-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())

    package = source / "src" / "pixeldiffusion"
    files = {f"pixeldiffusion/{p.relative_to(package).as_posix()}" for p in package.rglob("*") if p.is_file()}
    assert {
        "pixeldiffusion/py.typed",
        "pixeldiffusion/data/digits.npz",
        "pixeldiffusion/data/emoji.npz",
        "pixeldiffusion/data/EMOJI-LICENCE.txt",
        "pixeldiffusion/serve/static/index.html",
        "pixeldiffusion/serve/static/app.js",
        "pixeldiffusion/serve/static/style.css",
    } <= files
    assert not files - shipped, f"missing from the wheel: {sorted(files - shipped)}"
