"""Build script: compiles ``lora_route._C`` from ``csrc/`` when torch is importable in the build environment (that is,
``pip install --no-build-isolation`` with torch installed).

With a CUDA build of torch and nvcc the extension holds the CUDA and the CPU kernels; without them (CPU-only torch,
no nvcc) it holds the CPU kernels alone. Without torch in the build environment, or with ``LORA_ROUTE_BUILD_CUDA=0``,
the pure-Python package installs and the Triton and torch backends serve every call. ``LORA_ROUTE_BUILD_CUDA=1``
makes a missing CUDA toolchain an error instead. ``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default:
Ampere 8.0/8.6 and Hopper 9.0; 8.0 or newer, the kernels use bf16 tensor cores); ``MAX_JOBS`` caps the parallel
compile jobs of ninja.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["lora_route", "lora_route.*"]) + ["lora_route.triton_kernels"]
PACKAGE_DIR = {"lora_route.triton_kernels": "triton_kernels"}
DEFAULT_ARCH_LIST = "8.0;8.6;9.0"


def _say(message):
    print(f"lora_route setup: {message}", file=sys.stderr)


def _cuda_build_reason():
    """Return None when the CUDA extension can be built, else why it cannot."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return "torch is not importable in the build environment"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        return "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if not glob.glob(os.path.join(CUDA_HOME, "lib*", "libcudart.so*")):
        return (f"CUDA_HOME={CUDA_HOME} holds no lib64/libcudart.so "
                "(set CUDA_HOME to the toolkit root, e.g. /usr/local/cuda)")
    if not glob.glob("csrc/*.cu"):
        return "csrc/ holds no CUDA sources"
    return None


def _arch_list():
    """``TORCH_CUDA_ARCH_LIST`` (default :data:`DEFAULT_ARCH_LIST`); raises on a numeric entry older than 8.0."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    for entry in arch_list.replace(";", " ").split():
        number = entry.removesuffix("+PTX")
        try:
            too_old = float(number) < 8.0
        except ValueError:
            continue
        if too_old:
            raise RuntimeError(
                f"TORCH_CUDA_ARCH_LIST={arch_list!r} names compute capability {number}; lora_route._C needs 8.0 or "
                "newer (bf16 tensor cores)"
            )
    return arch_list


def _torch_importable():
    try:
        import torch.utils.cpp_extension  # noqa: F401
    except ImportError:
        return False
    return True


def _extensions():
    if os.environ.get("LORA_ROUTE_BUILD_CUDA", "auto") == "0":
        _say("installing the pure-Python package without lora_route._C (LORA_ROUTE_BUILD_CUDA=0)")
        return [], {}
    reason = _cuda_build_reason()
    if reason is not None and os.environ.get("LORA_ROUTE_BUILD_CUDA") == "1":
        raise RuntimeError(f"LORA_ROUTE_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    if reason is not None and not _torch_importable():
        _say(f"installing the pure-Python package without lora_route._C ({reason})")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    # OpenMP lets at::parallel_for in the CPU kernels use torch's threads (GCC on Linux, as torch's own wheels); elsewhere
    # the kernels run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    options = {"depends": glob.glob("csrc/*.h"), "extra_link_args": openmp}
    if reason is None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list()
        _say("building lora_route._C (CUDA and CPU kernels) for "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        extension = CUDAExtension(name="lora_route._C", sources=cpu_sources + sorted(glob.glob("csrc/*.cu")),
                                  extra_compile_args={"cxx": ["-O3", *openmp], "nvcc": ["-O3"]}, **options)
    else:
        _say(f"building lora_route._C with the CPU kernels only ({reason})")
        extension = CppExtension(name="lora_route._C", sources=cpu_sources,
                                 define_macros=[("LORA_ROUTE_CPU_ONLY", None)],
                                 extra_compile_args=["-O3", *openmp], **options)
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"lora_route.adapters": ["dat_languages.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
