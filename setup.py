"""nas_jax: meta-learned neural architecture search in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="nas_jax",
    version="0.1.0",
    description="Meta-learned neural architecture search in JAX/Flax.",
    packages=find_packages(include=["nas_jax", "nas_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "absl-py>=2.1",
        "ml-collections>=1.1.0",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8",
        "importlib_resources",
        "grain>=0.2.18",
        "scikit-learn>=1.5",
        "mnist1d>=0.0.2.post1",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "numpy>=1.26",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6"]},
)
