"""Build the curvfast._C extension (native ops) from csrc/.

A CUDAExtension is built when nvcc is found and torch is a CUDA build (unless
CURVFAST_FORCE_CPU=1), otherwise a CppExtension with the CPU kernels only. Package metadata
lives in pyproject.toml.
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


def extensions():
    import torch

    use_cuda = want_cuda(torch)
    from torch.utils import cpp_extension

    sources = [os.path.relpath(p, ROOT) for p in
               sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
               + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    kwargs = {}
    if use_cuda:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
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
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
