"""Reference pools for SAIR restorers, as folders, and the restorer loader of ``fsr restore --references``.

A pool folder (what stage ``sair_latent`` writes as its output ``pool``, local or ``s3://``)::

    networks.json          {"references": {"class": "sair_reference_pool", "kwargs": {...}}}
    weights/references.pt  its buffers: the references' W+ inversions and identity embeddings

:func:`load_restorer_with_references` loads a registered restorer and puts the pool in place of its
network ``references`` (the pool the stage built in): the restorer then picks each face's reference from
the new pool. The pool's codes must come from the restorer's generator and its embeddings from the same
identity network (``identity`` in the pool's arguments; checked), so a pool made by one ``sair_latent`` run
serves restorers of that run's generator. :func:`load_restorer_for_archive` adds ``--identity``: every face
of the archive is taken to show that person, whose references a SAIR restorer with ``reference_identity:
given`` then searches from.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import torch

from fsr_core import storage

__all__ = ["load_pool", "load_restorer_for_archive", "load_restorer_with_references", "save_pool"]

POOL_NETWORKS = "networks.json"
POOL_WEIGHTS = "weights/references.pt"


def save_pool(uri: str, pool: torch.nn.Module) -> str:
    """Write a pool folder (see the module docstring); ``networks.json`` last."""
    from fsr_core.networks import network_spec

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in pool.state_dict().items()}, buffer)
    storage.write_bytes(storage.join(uri, POOL_WEIGHTS), buffer.getvalue())
    storage.write_bytes(storage.join(uri, POOL_NETWORKS),
                        json.dumps({"references": network_spec(pool)}, indent=2, sort_keys=True).encode())
    return uri


def load_pool(uri: str) -> torch.nn.Module:
    """The :class:`~fsr_core.networks.sair.ReferencePool` of a pool folder (or of a restorer bundle or
    checkpoint folder holding a network ``references``), weights loaded with ``weights_only``."""
    from fsr_core.networks import build_network

    try:
        specs = json.loads(storage.read_bytes(storage.join(uri, POOL_NETWORKS)))
    except FileNotFoundError:
        raise FileNotFoundError(f"not a reference pool (no {POOL_NETWORKS}): {uri}; give the 'pool' output of a "
                                "sair_latent stage") from None
    if "references" not in specs or specs["references"].get("class") != "sair_reference_pool":
        raise ValueError(f"{uri} holds no sair_reference_pool network 'references' (it has {sorted(specs)})")
    pool = build_network(specs["references"])
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(uri, POOL_WEIGHTS))), map_location="cpu",
                       weights_only=True)
    pool.load_state_dict(state)
    return pool.eval().requires_grad_(False)


def load_restorer_with_references(model_ref: Any, *, device: str = "cpu", references: str):
    """``load_restorer(model_ref)`` with its network ``references`` replaced by the pool at ``references``
    (the loader :func:`pipelines.archive_restore.restore_archive` takes; picklable with
    ``functools.partial``). ``ValueError`` when the restorer is no SAIR restorer or the pool does not fit."""
    from pipelines.model_registry import load_restorer

    restorer, info = load_restorer(model_ref, device=device)
    networks = getattr(restorer, "networks", {})
    if "references" not in networks:
        raise ValueError(f"--references is for restorers with a reference pool (search sair); "
                         f"{info.get('requested_uri')} has networks {sorted(networks)}")
    pool, current = load_pool(references), networks["references"]
    for key in ("layers", "style_dim", "embedding_dim", "identity"):
        if getattr(pool, key) != getattr(current, key):
            raise ValueError(f"the pool at {references} has {key}={getattr(pool, key)!r}, the restorer's "
                             f"{getattr(current, key)!r}: make the pool with the restorer's generator and identity "
                             "network")
    networks["references"] = pool.to(restorer.device)
    info = {**info, "references": os.fspath(references)}
    return restorer, info


def load_restorer_for_archive(model_ref: Any, *, device: str = "cpu", references: str | None = None,
                              identity: str | None = None):
    """The loader of ``fsr restore --references URI --identity NAME``: :func:`load_restorer_with_references`
    (or ``load_restorer`` without a pool), and with ``identity`` every face's per-face condition ``identity``
    set to it (:class:`~fsr_core.restore.restorer.FixedConditions`: an archive of one person, whose
    references the SAIR restorer then takes). ``ValueError`` when the restorer reads no such condition or,
    for a SAIR restorer, its pool holds no reference of ``identity``."""
    from fsr_core.restore.restorer import FixedConditions
    from pipelines.model_registry import load_restorer

    if references:
        restorer, info = load_restorer_with_references(model_ref, device=device, references=references)
    else:
        restorer, info = load_restorer(model_ref, device=device)
    if identity is None:
        return restorer, info
    if "identity" not in restorer.card.conditions:
        raise ValueError(f"--identity is for restorers that read each face's identity (SAIR with "
                         f"reference_identity: given); {info.get('requested_uri')} reads "
                         f"{list(restorer.card.conditions) or 'none'}")
    pool = getattr(restorer, "networks", {}).get("references")
    if pool is not None and identity not in pool.identities:
        raise ValueError(f"the reference pool holds no reference of identity {identity!r} (it holds "
                         f"{len(set(pool.identities))} identities, e.g. {sorted(set(pool.identities))[:3]})")
    return FixedConditions(restorer, {"identity": identity}), {**info, "identity": identity}
