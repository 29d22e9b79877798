"""What setup.cfg cannot declare: the packages, with engines/ shipped inside the package, and the
optional compiled signature kernel; everything else is in setup.cfg.

- engines/ (the Maven projects of the local search engines) is installed as
  ``image_match/engine_sources``, so that ``image-match engine start`` works from any install, not
  only from a source checkout (image_match.local_engine builds it in the user's data directory).
- The kernel (image_match/_signature_kernel.c): when no C compiler is there or the build fails,
  the package installs without it and signs with the numpy reference (image_match.kernel says
  which is in use).
"""

import sys

from setuptools import Extension, find_packages, setup

if sys.platform == "win32":
    FLAGS = ["/O2", "/fp:precise"]
else:
    # The kernel repeats the numpy reference's floating-point operations one by one: no fused
    # multiply-adds, no fast-math reassociation (the C file refuses a build that would).
    FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]

ENGINE_SOURCES = "image_match.engine_sources"

setup(packages=find_packages(include=["image_match", "image_match.*"]) + [ENGINE_SOURCES],
      package_dir={ENGINE_SOURCES: "engines"},
      package_data={
          ENGINE_SOURCES: ["README.md", "*/pom.xml", "*/src/**/*"],
          # The moderation page: its templates, JavaScript and CSS (no build step, nothing from a CDN).
          "image_match.server": ["assets/templates/*.html", "assets/static/*.js",
                                 "assets/static/*.css"],
      },
      ext_modules=[Extension("image_match._signature_kernel", ["image_match/_signature_kernel.c"],
                             extra_compile_args=FLAGS, optional=True)])
