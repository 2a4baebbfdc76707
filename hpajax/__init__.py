"""hpajax: protein subcellular localization from HPA confocal images, in JAX."""

__version__ = "0.1.0"
