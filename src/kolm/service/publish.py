"""Publish each finished job's artifact to an OCI registry (`kolm server --publish`).

Knows how to name a job's artifact in a registry and hands the push to
`kolm.registry.publish`; it does not know about queues, tenants' files or HTTP.
A failed push fails the job, so nothing reports success that is not published."""

from __future__ import annotations

import re
from pathlib import Path

from kolm.service.jobs import Job


def _component(text: str) -> str:
    """A lowercase OCI path component: [a-z0-9] runs joined by '-' (never empty)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def job_ref(prefix: str, tenant: str, name: str, job_id: str) -> str:
    """PREFIX/TENANT/NAME:JOB-ID, e.g. registry.local:5000/kolm/acme/support-tickets:3f9c…"""
    repo = f"{prefix.rstrip('/')}/{_component(tenant)}/{_component(name)}"
    return f"{repo}:{_component(job_id)[:128]}"


class RegistryPublisher:
    """The `publish` hook for the service: push with the eval referrer to `prefix`."""

    def __init__(self, prefix: str, insecure: bool = False):
        from kolm.registry.refs import parse_ref

        # A bad prefix fails when the server starts, not on each finished job.
        parse_ref(job_ref(prefix, "tenant", "task", "job"))
        self.prefix, self.insecure = prefix, insecure

    def __call__(self, artifact: Path, job: Job) -> None:
        from kolm.registry import publish

        ref = job_ref(self.prefix, job.tenant, job.name, job.id)
        publish(artifact, ref, with_eval=True, insecure=self.insecure)
