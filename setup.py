"""Build step for the one compiled part of vsrt: the fused gallery-scan kernel ``vsrt.runtime._scan``.

Everything else is declared in ``pyproject.toml``. The extension is optional: where no C compiler is available the
install still succeeds and search falls back to the ONNX Runtime kernel (``vsrt doctor`` says which is in use).
After editing ``vsrt/runtime/_scan.c`` or its headers (``_scan_*.h``) in an editable checkout, rebuild it
in place: ``pip install -e .`` (or ``python setup.py build_ext --inplace``).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Optimisation flags by compiler family (x86 SIMD paths are selected at run time, not with -march)."""

    def build_extensions(self) -> None:
        unix = self.compiler.compiler_type == "unix"
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3", "-std=gnu11", "-Wall"] if unix else ["/O2"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "vsrt.runtime._scan",
            sources=["vsrt/runtime/_scan.c"],
            depends=["vsrt/runtime/_scan_kernels.h", "vsrt/runtime/_scan_filter.h", "vsrt/runtime/_scan_fp16.h",
                     "vsrt/runtime/_scan_bf16.h"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
