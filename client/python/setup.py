"""pip install ./client/python: builds the `pagoda` package offline with the repo's CMake build.

No downloads: CMake, Ninja, pybind11, dlpack and every library come from Debian
(scripts/install-deps.sh); setuptools is the interpreter's own (no pyproject.toml, so pip does not
try to fetch build requirements). The native module is built by the CMake target pagoda_python (in the repo's
build/ when ./scripts/build.sh made one for this Python, else build/pip, or PAGODA_PIP_BUILD_DIR)
and copied into the wheel with the package's Python files and type stubs.

  python3 -m venv --system-site-packages .venv && .venv/bin/pip install ./client/python
  pip install --break-system-packages ./client/python   # Debian's interpreter, no venv
"""

import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def cmake_build(build_dir: str) -> None:
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        subprocess.check_call([
            "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DPAGODA_COMPONENTS=kernels;transport;kvstore;retriever;client",
        ])  # fmt: skip
    jobs = os.environ.get("PAGODA_JOBS", str(os.cpu_count() or 2))
    subprocess.check_call(["cmake", "--build", build_dir, "--target", "pagoda_python", "-j", jobs])


class CMakeBuild(build_ext):
    """Builds _pagoda with CMake: in PAGODA_PIP_BUILD_DIR when set, else in the repo's own build
    (./scripts/build.sh) when it exists and targets this interpreter's ABI, else in build/pip."""

    def build_extension(self, ext):
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        dirs = [os.environ["PAGODA_PIP_BUILD_DIR"]] if "PAGODA_PIP_BUILD_DIR" in os.environ else []
        if not dirs and os.path.exists(os.path.join(ROOT, "build", "build.ninja")):
            dirs.append(os.path.join(ROOT, "build"))
        dirs.append(os.path.join(ROOT, "build", "pip"))
        for build_dir in dirs:
            cmake_build(build_dir)
            built = os.path.join(build_dir, "client", "python", "pagoda", "_pagoda" + suffix)
            if os.path.exists(built):
                break
            print(f"pagoda: {build_dir} builds for another Python ABI; trying the next build dir")
        else:
            raise RuntimeError(f"no _pagoda{suffix} was built (CMake's Python3 is not {sys.executable}?)")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(built, dest)


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
