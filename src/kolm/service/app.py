"""The HTTP API of `kolm server` (FastAPI): submit, list, status, events, logs, cancel, files.

Every route but /v1/health needs `Authorization: Bearer KEY`; a missing or unknown key
is 401, and a job of another tenant is 404 on every route (ids do not leak). Uploads
are checked (relative names only, no `..`, size limits) before any file is written,
and the spec's files must lie inside the upload. A teacher key comes in the
`X-Kolm-Teacher-Key` header and is sealed at once (`seal`). Every request is written
to the audit log. The routes call `tenants`, `jobs` and the queue; nothing else.
"""

import asyncio
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kolm.errors import ServiceError
from kolm.service.jobs import ACTIVE, TERMINAL, Job, JobStore, job_paths
from kolm.service.queue import Queue
from kolm.service.seal import seal
from kolm.service.tenants import ServiceDB, Tenant, storage_used

TEACHER_KEY_HEADER = "X-Kolm-Teacher-Key"


@dataclass(frozen=True)
class Limits:
    """What one upload may hold."""

    max_file_bytes: int = 200_000_000
    max_upload_bytes: int = 500_000_000
    max_files: int = 500


class Refused(Exception):
    """A request refused with an HTTP status, a message and the exit code a client uses."""

    def __init__(self, status: int, message: str, exit_code: int = ServiceError.exit_code):
        super().__init__(message)
        self.status, self.message, self.exit_code = status, message, exit_code


def create_app(data: Path, queue: Queue, secret: bytes, limits: Limits | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

    limits = limits or Limits()
    db = ServiceDB(data)
    jobs = JobStore(db)
    app = FastAPI(title="kolm server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(Refused)
    async def refused(request: Request, e: Refused):  # the client's mistake, said plainly
        return JSONResponse({"error": e.message, "exit_code": e.exit_code}, e.status)

    @app.middleware("http")
    async def audit(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        tenant = getattr(request.state, "tenant", None)
        ms = (time.perf_counter() - t0) * 1000
        db.audit(tenant, request.method, request.url.path, response.status_code, round(ms, 2))
        return response

    def auth(request: Request) -> Tenant:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        tenant = db.tenant_for_key(key)
        if tenant is None:
            raise Refused(401, "missing or unknown API key (send Authorization: Bearer KEY)")
        request.state.tenant = tenant.name
        return tenant

    def own(request: Request, job_id: str) -> tuple[Tenant, Job]:
        tenant = auth(request)
        job = jobs.get(job_id, tenant.name)
        if job is None:
            raise Refused(404, f"no job {job_id}")
        return tenant, job

    @app.get("/v1/health")
    def health():
        return {"ok": True}

    @app.get("/v1/key")
    def public_key():
        """The key the server signs artifacts with (trust it with `kolm login --trust`)."""
        from kolm.keys import KeyStore

        return {"public_key": KeyStore(data).export_public()}

    @app.post("/v1/jobs", status_code=201)
    async def submit(request: Request):
        tenant = auth(request)
        _check_quotas(data, jobs, tenant, request, limits)
        form = await request.form(
            max_files=limits.max_files, max_fields=10, max_part_size=1_000_000
        )
        job_id = jobs.new_id()
        paths = job_paths(data, tenant.name, job_id)
        try:
            await _save_upload(form, paths.uploads, limits)
            spec_name, spec = _check_spec(form, paths.uploads)
        except Refused:
            shutil.rmtree(paths.uploads, ignore_errors=True)
            raise
        options = _options(form)
        key = request.headers.get(TEACHER_KEY_HEADER) or None
        provider = _provider(spec)
        sealed = seal(key, secret, job_id) if key and provider else None
        job = jobs.create(job_id, tenant.name, spec.name, spec_name, options, provider, sealed)
        queue.enqueue(job_id)
        return job.public()

    @app.get("/v1/jobs")
    def list_jobs(request: Request):
        return {"jobs": [j.public() for j in jobs.list(auth(request).name)]}

    @app.get("/v1/jobs/{job_id}")
    def status(request: Request, job_id: str):
        return own(request, job_id)[1].public()

    @app.get("/v1/jobs/{job_id}/logs")
    def logs(request: Request, job_id: str):
        _, job = own(request, job_id)
        path = job_paths(data, job.tenant, job.id).log
        return PlainTextResponse(path.read_text(encoding="utf-8") if path.is_file() else "")

    @app.get("/v1/jobs/{job_id}/events")
    def events(request: Request, job_id: str, after: int = 0):
        _, job = own(request, job_id)
        path = job_paths(data, job.tenant, job.id).events
        return StreamingResponse(_sse(jobs, job.id, path, after), media_type="text/event-stream")

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel(request: Request, job_id: str):
        _, job = own(request, job_id)
        if job.state in TERMINAL:
            raise Refused(409, f"job {job_id} already ended ({job.state})")
        if job.state == "running":
            jobs.set_fields(job.id, cancel=1)  # the worker stops at the job's next event
            return JSONResponse(jobs.get(job.id).public(), 202)
        return jobs.advance(job.id, "cancelled", exit_code=130, error="cancelled").public()

    @app.post("/v1/jobs/{job_id}/key")
    def resend_key(request: Request, job_id: str):
        _, job = own(request, job_id)
        key = request.headers.get(TEACHER_KEY_HEADER)
        if job.state != "needs_key" or not key:
            raise Refused(
                409,
                f"job {job_id} is {job.state}; it needs no key now"
                if key
                else f"send the key in the {TEACHER_KEY_HEADER} header",
            )
        jobs.set_fields(job.id, sealed_key=seal(key, secret, job.id))
        job = jobs.advance(job.id, "queued", error=None)
        queue.enqueue(job.id)
        return job.public()

    @app.get("/v1/jobs/{job_id}/artifact")
    def artifact(request: Request, job_id: str):
        _, job = own(request, job_id)
        if job.state != "succeeded":
            raise Refused(404, f"job {job_id} has no artifact ({job.state})")
        return _file(job, job.result["artifact"])

    @app.get("/v1/jobs/{job_id}/files/{name}")
    def files(request: Request, job_id: str, name: str):
        _, job = own(request, job_id)
        if name not in ((job.result or {}).get("files") or []):
            raise Refused(404, f"job {job_id} has no file {name!r}")
        return _file(job, name)

    def _file(job: Job, name: str):
        path = job_paths(data, job.tenant, job.id).artifacts / name
        if not path.is_file():
            raise Refused(404, f"job {job.id} has no file {name!r}")
        return FileResponse(path, filename=name)

    return app


# -- uploads --------------------------------------------------------------------------
def _check_quotas(data: Path, jobs: JobStore, tenant: Tenant, request, limits: Limits) -> None:
    q = tenant.quotas
    if jobs.active_count(tenant.name) >= q.max_jobs:
        raise Refused(
            429,
            f"tenant {tenant.name} has {q.max_jobs} jobs queued or running "
            "(its quota); wait for one to end or cancel one",
        )
    if tenant.spent_usd >= q.max_usd:
        raise Refused(
            403,
            f"tenant {tenant.name} has spent its teacher quota "
            f"(${tenant.spent_usd:.2f} of ${q.max_usd:.2f})",
        )
    size = int(request.headers.get("content-length") or 0)
    if size > limits.max_upload_bytes:
        raise Refused(
            413, f"upload of {size} bytes is over the limit of {limits.max_upload_bytes} bytes"
        )
    used = storage_used(data, tenant.name)
    if used + size > q.max_storage_bytes:
        raise Refused(
            403,
            f"tenant {tenant.name} would use {used + size} bytes, over its "
            f"storage quota of {q.max_storage_bytes}; delete old jobs' files",
        )


def safe_name(name: str) -> PurePosixPath:
    """A relative upload name, or Refused: no absolute names, `..`, backslashes or NULs."""
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or len(parts) > 16
    ):
        raise Refused(
            400,
            f"upload name {name!r} is not allowed: use a relative path "
            "inside the spec's folder (no '..', no absolute path)",
        )
    return PurePosixPath(name)


async def _save_upload(form, folder: Path, limits: Limits) -> None:
    uploads = form.getlist("file")
    if not uploads:
        raise Refused(400, "the upload holds no files (send the spec and its files as `file`)")
    total = 0
    folder.mkdir(parents=True)
    for up in uploads:
        if isinstance(up, str):
            raise Refused(400, "each `file` field must be a file")
        rel = safe_name(up.filename or "")
        size = up.size or 0
        total += size
        if size > limits.max_file_bytes or total > limits.max_upload_bytes:
            raise Refused(
                413,
                f"{rel} makes the upload too large (limits: "
                f"{limits.max_file_bytes} bytes a file, {limits.max_upload_bytes} "
                "in all)",
            )
        dest = folder.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(dest, flags, 0o600)
        except FileExistsError:
            raise Refused(400, f"{rel} is uploaded twice") from None
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(up.file, f)


def _check_spec(form, folder: Path):
    """Load the uploaded spec; its files must be inside the upload, its base a named one."""
    from kolm.basemodel import known_bases
    from kolm.errors import SpecError
    from kolm.spec import load_spec

    name = str(safe_name(str(form.get("spec") or "kolm.yaml")))
    try:
        spec = load_spec(folder / name)
    except SpecError as e:
        raise Refused(422, str(e).replace(str(folder) + "/", ""), e.exit_code) from None
    root = folder.resolve()
    paths = [spec.examples, spec.unlabeled, spec.verifier.json_schema]
    outside = [str(p) for p in paths if p is not None and not p.resolve().is_relative_to(root)]
    outside += [c for c in spec.corpus if not (root / c).resolve().is_relative_to(root)]
    problems = [f"{p} is outside the uploaded folder" for p in outside]
    if spec.base.lower() not in known_bases():
        problems.append(
            f"base {spec.base!r}: a remote compile takes a registered base name "
            f"({', '.join(known_bases())})"
        )
    if spec.teacher is not None and spec.teacher.model.startswith("local:"):
        problems.append("teacher: a `local:` teacher cannot run on the server")
    if problems:
        raise Refused(422, str(SpecError(problems, source=name)), SpecError.exit_code)
    return name, spec


def _options(form) -> dict:
    try:
        raw = json.loads(str(form.get("options") or "{}"))
    except ValueError:
        raise Refused(400, "options must be JSON") from None
    opts = {"force": bool(raw.get("force", False))}
    if raw.get("steps") is not None:
        if not isinstance(raw["steps"], int) or raw["steps"] < 1:
            raise Refused(400, "options.steps must be a positive integer")
        opts["steps"] = raw["steps"]
    return opts


def _provider(spec) -> str | None:
    if spec.teacher is None:
        return None
    from kolm.teacher import TeacherRef

    return TeacherRef.parse(spec.teacher.model).provider


# -- server-sent events -----------------------------------------------------------------
async def _sse(jobs: JobStore, job_id: str, path: Path, after: int):
    """Each event line after `after`, as SSE; ends once the job has ended (or needs its key)."""
    seen, buffer = 0, ""
    while True:
        ended = jobs.get(job_id).state not in ACTIVE or jobs.get(job_id).state == "needs_key"
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                f.seek(seen)
                buffer += f.read()
                seen = f.tell()
        *lines, buffer = buffer.split("\n")
        for line in lines:
            row = json.loads(line)
            if row["seq"] > after:
                yield f"id: {row['seq']}\nevent: {row['type']}\ndata: {line}\n\n"
        if ended:
            state = jobs.get(job_id).state
            yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
            return
        await asyncio.sleep(0.3)
