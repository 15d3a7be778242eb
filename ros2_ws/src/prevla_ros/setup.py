"""ament_python build of prevla_ros for colcon on a full ROS 2 install.

pip users install the whole repository with the top-level pyproject.toml instead; both
declare the same node executables (tests/unit/test_launch_consistency.py checks it).
"""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = "prevla_ros"
HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.relpath(os.path.join(HERE, "..", "..", "..", "launch"), HERE)

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob(os.path.join(LAUNCH, "*.launch.py"))
         + glob(os.path.join(LAUNCH, "*.yaml")) + glob(os.path.join(LAUNCH, "*.rviz"))),
        (f"share/{PACKAGE}/launch/sros2", glob(os.path.join(LAUNCH, "sros2", "*.xml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="prevla developers",
    maintainer_email="dev@prevla.invalid",
    description="Robot-side prevla runtime nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = prevla_ros.nodes.sim_node:main",
            "policy_node = prevla_ros.nodes.policy_node:main",
            "verifier_node = prevla_ros.nodes.verifier_node:main",
            "world_model_node = prevla_ros.nodes.world_model_node:main",
            "controller_adapter_node = prevla_ros.nodes.controller_adapter_node:main",
            "prevla = prevla_ros.cli:main",
        ],
    },
)
