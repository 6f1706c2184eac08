"""The id schemes of models, datasets and jobs, shared by the service (which makes them) and the SDK (which
computes a model's id before uploading it, and tells an id from a path).

A model's id hashes its whole upload header (the file's sha256 and every piece of metadata), so the same bytes
with the same metadata are the same record; a dataset's hashes its bytes; a job's is random.
"""

from __future__ import annotations

import hashlib
import uuid

from kernelscope.v1 import models_pb2

MODEL_PREFIX = "mdl_"
DATASET_PREFIX = "ds_"
JOB_PREFIX = "job_"
HASH_CHARS = 24  # hex digits of sha256 kept in a model or dataset id


def model_id(header: models_pb2.ModelHeader) -> str:
    """The id of an upload with this header: a hash of the whole header, in deterministic encoding.

    Same bytes and same metadata, same model; anything else is another record over the same blob. A record
    never changes, so a re-upload with another input spec, name or architecture can neither be ignored nor
    rewrite what earlier jobs ran with. An absent and an empty input spec are the same spec.
    """
    canonical = models_pb2.ModelHeader()
    canonical.CopyFrom(header)
    canonical.input_spec.SetInParent()
    return MODEL_PREFIX + hashlib.sha256(canonical.SerializeToString(deterministic=True)).hexdigest()[:HASH_CHARS]


def dataset_id(sha256: str) -> str:
    """The id of a dataset whose bytes have this sha256 (hex)."""
    return DATASET_PREFIX + sha256[:HASH_CHARS]


def new_job_id() -> str:
    return JOB_PREFIX + uuid.uuid4().hex


def is_model_id(text: str) -> bool:
    return text.startswith(MODEL_PREFIX)


def is_dataset_id(text: str) -> bool:
    return text.startswith(DATASET_PREFIX)
