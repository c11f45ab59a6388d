"""pip install ./client/python: builds the `pagoda` package offline with the repo's CMake build.

No downloads: CMake, Ninja, pybind11, dlpack and every library come from Debian
(scripts/install-deps.sh); setuptools is the interpreter's own (no pyproject.toml, so pip does not
try to fetch build requirements). The native module is built by the CMake target pagoda_python in
PAGODA_PIP_BUILD_DIR (default <repo>/build/pip; ccache makes a rebuild cheap) and copied into the
wheel with the package's Python files and type stubs.

  python3 -m venv --system-site-packages .venv && .venv/bin/pip install ./client/python
  pip install --break-system-packages ./client/python   # Debian's interpreter, no venv
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("PAGODA_PIP_BUILD_DIR", os.path.join(ROOT, "build", "pip"))
        jobs = os.environ.get("PAGODA_JOBS", str(os.cpu_count() or 2))
        if not os.path.exists(os.path.join(build_dir, "build.ninja")):
            subprocess.check_call([
                "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DPython3_EXECUTABLE={sys.executable}",
                "-DPAGODA_COMPONENTS=kernels;transport;kvstore;retriever;client",
            ])  # fmt: skip
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "pagoda_python", "-j", jobs])
        built = glob.glob(os.path.join(build_dir, "client", "python", "pagoda", "_pagoda*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one _pagoda*.so in {build_dir}, found {built}")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(built[0], dest)


setup(
    name="pagoda",
    version="0.1.0",
    description="Pagoda: a tier-aware KV-cache store and decode worker for LLM inference",
    packages=["pagoda"],
    package_dir={"pagoda": os.path.relpath(os.path.join(HERE, "pagoda"))},
    package_data={"pagoda": ["*.pyi", "py.typed"]},
    ext_modules=[Extension("pagoda._pagoda", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    zip_safe=False,
)
