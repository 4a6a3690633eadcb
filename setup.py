"""Build the curvfast._C extension (native ops) from csrc/.

A CUDAExtension is built when nvcc is found and torch is a CUDA build (unless
CURVFAST_FORCE_CPU=1), otherwise a CppExtension with the CPU kernels only;
CURVFAST_REQUIRE_CUDA_BUILD=1 turns "no CUDA kernels" into a build error (our CI sets it).
The CUDA kernels target the visible GPU, or sm_80 and sm_90 when none is visible
(TORCH_CUDA_ARCH_LIST overrides both). Package metadata lives in pyproject.toml.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else asked from nvcc itself.

    nvcc on PATH may be a wrapper script, so its parent folder is not trusted: the `TOP=` line
    of `nvcc --dryrun` names the real root.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, cwd=tmp, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if match:
        return os.path.realpath(match.group(1).strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def want_cuda(torch):
    if os.environ.get("CURVFAST_FORCE_CPU") == "1" or torch.version.cuda is None:
        return False
    cuda_home = find_cuda_home()
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return False
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    return True


def check_dynamic_libstdcxx(path):
    """Refuse an extension that carries its own static copy of libstdc++.

    Some toolchains (a ``CXX`` that adds ``-static-libstdc++``) link libstdc++ into the module;
    its iostreams then mix with torch's shared libstdc++ and the first TORCH_CHECK message that
    formats a number crashes the process (seen with torch 2.11 on a GPU image).
    """
    readelf = shutil.which("readelf")
    if readelf is None:
        return
    needed = subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout
    if "libstdc++" not in needed:
        raise RuntimeError(
            f"curvfast: {os.path.basename(path)} was linked with a static libstdc++ (CXX="
            f"{os.environ.get('CXX', 'unset')}), which crashes on the first error message next to "
            "torch's shared libstdc++. Rebuild with the system compiler: unset CXX CC (or set "
            "CXX=g++ CC=gcc) and run the build again.")


def extensions():
    import torch

    use_cuda = want_cuda(torch)
    if os.environ.get("CURVFAST_REQUIRE_CUDA_BUILD") == "1" and not use_cuda:
        raise RuntimeError("curvfast: CURVFAST_REQUIRE_CUDA_BUILD=1 but the CUDA kernels cannot be built "
                           "(needs nvcc under CUDA_HOME and a CUDA build of torch; CURVFAST_FORCE_CPU unset)")
    from torch.utils import cpp_extension

    sources = [os.path.relpath(p, ROOT) for p in
               sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = {}
    if use_cuda:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        if not torch.cuda.is_available():  # else torch targets the visible GPU
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += [os.path.relpath(p, ROOT)
                    for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        cxx.append("-DCURVFAST_WITH_CUDA")
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3", "--fmad=false"]}
        wheel_headers = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "include")
        if os.path.isdir(wheel_headers):
            include_dirs.append(wheel_headers)
        ext_cls = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = cpp_extension.CppExtension
    print(f"curvfast: building {'CUDA' if use_cuda else 'CPU-only'} extension"
          + (f" (CUDA_HOME={os.environ['CUDA_HOME']})" if use_cuda else ""), file=sys.stderr)
    ext = ext_cls("curvfast._C", sources, include_dirs=include_dirs,
                  extra_link_args=["-fopenmp"], **kwargs)

    class BuildExtension(cpp_extension.BuildExtension):
        def build_extension(self, extension):
            super().build_extension(extension)
            check_dynamic_libstdcxx(self.get_ext_fullpath(extension.name))

    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
