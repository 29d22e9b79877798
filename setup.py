"""The optional compiled signature kernel (image_match/_signature_kernel.c); everything else is
declared in setup.cfg. When no C compiler is there or the build fails, the package installs
without it and signs with the numpy reference (image_match.kernel says which is in use)."""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    FLAGS = ["/O2", "/fp:precise"]
else:
    # The kernel repeats the numpy reference's floating-point operations one by one: no fused
    # multiply-adds, no fast-math reassociation (the C file refuses a build that would).
    FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("image_match._signature_kernel", ["image_match/_signature_kernel.c"],
                             extra_compile_args=FLAGS, optional=True)])
