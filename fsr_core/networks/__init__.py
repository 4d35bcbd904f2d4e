"""Networks, and the registry of their names: what ``networks.json`` files say, mapped to classes.

The list is explicit (no folder scanning) and lazy (``"module:Class"`` strings, imported when a
name is asked for). It is one of the project's *lists*: ``__fsr_registry__`` tells the stage
fingerprints to leave it out, so adding a network re-runs no cached stage (see
:mod:`pipelines.fingerprint`). Methods from outside the package add theirs through
:mod:`fsr_core.plugins`.

:func:`build_network` is the one rebuild path, used by checkpoints and restorer bundles alike.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

__fsr_registry__ = True

__all__ = ["build_network", "network_class", "network_name", "network_spec", "NETWORKS"]

NETWORKS: dict[str, str] = {
    "l2h_generator": "fsr_core.networks.two_step:L2HGenerator",
    "l2h_discriminator": "fsr_core.networks.two_step:L2HDiscriminator",
    "h2l_generator": "fsr_core.networks.two_step:H2LGenerator",
    "h2l_discriminator": "fsr_core.networks.two_step:H2LDiscriminator",
    "face_embedder": "fsr_core.networks.face_embedder:FaceEmbedder",
    "identity_classifier": "fsr_core.networks.face_embedder:IdentityClassifier",
    "selfsr_degrader": "fsr_core.networks.selfsr:FlowDegradationNetwork",
    "selfsr_lr_discriminator": "fsr_core.networks.selfsr:LRDiscriminator",
    "selfsr_generator": "fsr_core.networks.selfsr:SelfConditionedGenerator",
    "selfsr_discriminator": "fsr_core.networks.selfsr:ProgressiveDiscriminator",
    "cr_regulariser": "fsr_core.networks.cr:CharacteristicRegulariser",
    "cr_lr_discriminator": "fsr_core.networks.cr:LRDomainDiscriminator",
    "cr_super_resolver": "fsr_core.networks.cr:CRSuperResolver",
    "cr_feature_discriminator": "fsr_core.networks.cr:FeatureDiscriminator",
    "stylegan2_generator": "fsr_core.networks.stylegan2:Generator",
    "stylegan2_discriminator": "fsr_core.networks.stylegan2:Discriminator",
    "latent_prior": "fsr_core.networks.latent_prior:LatentPrior",
    "sair_reference_pool": "fsr_core.networks.sair:ReferencePool",
    "sair_expression_directions": "fsr_core.networks.sair:ExpressionDirections",
}
"""Network name (as stored in checkpoints) -> ``"module:Class"``."""


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _classes() -> dict[str, Any]:
    from fsr_core.plugins import merged

    return merged("NETWORKS", NETWORKS)


def network_class(name: str) -> type:
    """The class registered as ``name``; ``KeyError`` naming the known ones otherwise."""
    from fsr_core.networks.base import Network

    classes = _classes()
    if name not in classes:
        raise KeyError(f"unknown network {name!r}; known: {sorted(classes)}")
    cls = classes[name]
    cls = _load(cls) if isinstance(cls, str) else cls
    if not (isinstance(cls, type) and issubclass(cls, Network)):
        raise TypeError(f"network {name!r} is {cls!r}, not a fsr_core.networks.base.Network subclass")
    return cls


def network_name(network: Any) -> str:
    """The registered name of a network (or network class); ``KeyError`` when it has none."""
    cls = network if isinstance(network, type) else type(getattr(network, "module", network))
    for name, entry in _classes().items():
        if entry is cls or (isinstance(entry, str) and entry == f"{cls.__module__}:{cls.__qualname__}"):
            return name
    raise KeyError(f"{cls.__module__}.{cls.__qualname__} is not a registered network (fsr_core.networks.NETWORKS)")


def network_spec(network: Any) -> dict[str, Any]:
    """``{"class": registered name, "kwargs": constructor arguments}`` of a (possibly DDP-wrapped) network."""
    module = getattr(network, "module", network)
    return {"class": network_name(module), "kwargs": dict(module.config)}


def build_network(spec: Mapping[str, Any]) -> Any:
    """A new network from ``{"class": name, "kwargs": {...}}`` (random weights)."""
    if not isinstance(spec, Mapping) or "class" not in spec or not isinstance(spec.get("kwargs", {}), Mapping):
        raise ValueError(f"a network spec is {{'class': name, 'kwargs': {{...}}}}, got {spec!r}")
    return network_class(spec["class"])(**dict(spec.get("kwargs", {})))
