"""Maps the top-level folders into the one import namespace ``lifelong``.

All metadata lives in pyproject.toml; this file only lists the packages, because
setuptools cannot discover sub-packages of folders whose names differ from their
import names (``common/`` is ``lifelong.common``, ``cli/client/`` is ``lifelong.client``).
"""

from setuptools import find_packages, setup

FOLDERS = {
    "lifelong": "cli",
    "lifelong.common": "common",
    "lifelong.cloud": "cloud",
    "lifelong.edge": "edge",
    "lifelong.broker": "broker",
    "lifelong.learning": "learning",
}

packages = []
for name, folder in FOLDERS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

# Folders of data files inside a package are listed as packages of their own, so that setuptools
# ships them (with pyproject's package-data) without warning that they would be ignored.
packages += ["lifelong.cloud.console.templates", "lifelong.cloud.console.static"]

setup(packages=packages)
