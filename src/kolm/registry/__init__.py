"""kolm artifacts in OCI registries: push, pull (verified before it is written), referrers.

`refs` parses references, `auth` finds credentials, `client` speaks the OCI
distribution API, `artifacts` maps `.kolm` files and their referrers onto it.
"""

from kolm.registry.artifacts import (
    ARTIFACT_TYPE,
    CHECKPOINT_TYPE,
    EVAL_TYPE,
    LAYER_TYPE,
    PullResult,
    PushResult,
    list_referrers,
    publish,
    pull,
    push_checkpoint,
    read_checkpoints,
    read_eval,
)
from kolm.registry.refs import Ref, parse_ref

__all__ = [
    "ARTIFACT_TYPE",
    "CHECKPOINT_TYPE",
    "EVAL_TYPE",
    "LAYER_TYPE",
    "PullResult",
    "PushResult",
    "Ref",
    "list_referrers",
    "parse_ref",
    "publish",
    "pull",
    "push_checkpoint",
    "read_checkpoints",
    "read_eval",
]
