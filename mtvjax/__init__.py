"""mtvjax: MTVCrafter (4DMoT motion tokenizer + MV-DiT) in JAX/Flax."""
__version__ = "0.1.0"
