"""PLACEHOLDER: replaced by the module that builds this family (issue 24)."""

from hpajax.models.weights import ImportRules

VARIANTS: dict = {}
IMPORT_RULES = ImportRules()


def from_config(cfg, dtype):
    raise NotImplementedError(cfg.name)
