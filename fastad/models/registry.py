"""Model names -> classes, so that a checkpoint's JSON config and `--model NAME` rebuild a model."""
from __future__ import annotations

from fastad.models.base import AnomalyModel

MODELS: dict[str, type[AnomalyModel]] = {}


def register_model(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: makes `cls` available as create_model(cls.name)."""
    if not cls.name or cls.name in MODELS:
        raise ValueError(f"model name must be unique and non-empty, got {cls.name!r} for {cls.__name__}")
    MODELS[cls.name] = cls
    return cls


def create_model(name: str, read_weight_files: bool = True, **config) -> AnomalyModel:
    """A new model by registry name with the keys of its Config; read_weight_files False builds it
    for loading a checkpoint (no weights file is opened, see AnomalyModel)."""
    import fastad.models  # noqa: F401  (registers every model)

    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](read_weight_files=read_weight_files, **config)
