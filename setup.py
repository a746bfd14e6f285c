"""Installs mtvjax: a JAX/Flax reimplementation of MTVCrafter (4DMoT + MV-DiT)."""
from setuptools import find_packages, setup

setup(
    name="mtvjax",
    version="0.1.0",
    description="MTVCrafter in JAX/Flax: 4D motion tokenizer (4DMoT) and motion-aware video DiT.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mtvjax", "mtvjax.*", "data_pipeline", "data_pipeline.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "array-record>=0.7",
        "einops>=0.8",
        "ml-collections>=1.0",
        "chex>=0.1.89",
        "numpy>=1.26",
        "tqdm>=4.60",
        "tensorboardX>=2.6",
        "msgpack>=1.0",
        "absl-py>=2.0",
        "matplotlib>=3.8",
        "imageio>=2.34",
        "av>=12",
        "safetensors>=0.4",
    ],
    extras_require={
        "torch": ["torch==2.13.0"],
        # the viewer for the event files every training run writes (`tensorboard --logdir WORKDIR`)
        "tensorboard": ["tensorboard>=2.15"],
        # TFDS builder (data_pipeline/tfds_builder.py); TensorFlow itself is not needed.
        # importlib_resources: imported by tensorflow-datasets but not declared by it on Python >= 3.9.
        "tfds": ["tensorflow-datasets>=4.9.9", "importlib_resources>=6"],
        # umT5 tokenizer at run time (mtvjax.models.encoders.umt5.load_tokenizer, data_pipeline.text_cache).
        "text": ["transformers>=4.46", "sentencepiece>=0.2", "tokenizers>=0.20"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "scipy>=1.11", "diffusers>=0.35",
                "tensorflow-datasets>=4.9.9", "importlib_resources>=6",
                # test-only oracles (umT5 / CLIP parity) and the tokenizer
                "transformers>=4.46", "sentencepiece>=0.2", "tokenizers>=0.20"],
    },
    entry_points={"console_scripts": ["mtvjax=mtvjax.cli:main"]},
)
