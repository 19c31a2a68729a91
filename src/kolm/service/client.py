"""The client of `kolm server`: `kolm compile --remote URL` and `kolm login URL`.

It uploads the spec and the files it names (only files inside the spec's folder, no
symlinks), streams the job's events (log lines to stderr, progress bars), downloads
the artifact and its reports beside `--out`, and ends like a local compile: the same
summary, or the job's own error and exit code. The API key comes from `KOLM_API_KEY`
or from `kolm login` (kept in `$KOLM_HOME/credentials.json`, mode 0600). This module
knows HTTP and files; it knows nothing of how the server compiles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from kolm.errors import KolmError, ServiceError, SignatureError

KEY_ENV = "KOLM_API_KEY"
CRED_PREFIX = "kolm-server:"
TEACHER_KEY_HEADER = "X-Kolm-Teacher-Key"


class RemoteError(KolmError):
    """A remote job (or the server's check of it) failed: carries the job's own exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# -- credentials ---------------------------------------------------------------------
def _credentials() -> tuple[Path, dict]:
    from kolm.keys import kolm_home

    path = kolm_home() / "credentials.json"
    try:
        return path, (json.loads(path.read_text()) if path.is_file() else {})
    except ValueError:
        raise ServiceError(f"{path} is not valid JSON", hint="fix or move it aside") from None


def api_key_for(url: str) -> str:
    """KOLM_API_KEY, else the key `kolm login URL` stored."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    path, creds = _credentials()
    key = creds.get(CRED_PREFIX + url.rstrip("/"))
    if not key:
        raise ServiceError(f"no API key for {url}", hint=f"run `kolm login {url}` or set {KEY_ENV}")
    return str(key)


def save_login(url: str, key: str) -> Path:
    """Store the key for `url` in the credentials file (0600), keeping its other entries."""
    from kolm.keys import _write_secret

    path, creds = _credentials()
    creds[CRED_PREFIX + url.rstrip("/")] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_secret(path, json.dumps(creds, indent=1).encode())
    return path


# -- HTTP ----------------------------------------------------------------------------
class Client:
    """Calls to one server with one API key; every failure becomes a KolmError."""

    def __init__(self, url: str, key: str, timeout: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {key}"}
        )

    def request(self, method: str, path: str, **kw):
        try:
            r = self.http.request(method, path, **kw)
        except self._httpx.HTTPError as e:
            raise ServiceError(
                f"cannot reach kolm server {self.url}: {e}",
                hint="check the URL and that `kolm server` runs there",
            ) from None
        if r.status_code >= 400:
            raise _refusal(r)
        return r

    def public_key(self) -> str:
        return self.request("GET", "/v1/key").json()["public_key"]

    def jobs(self) -> list[dict]:
        return self.request("GET", "/v1/jobs").json()["jobs"]

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def submit(
        self, files: list[tuple[str, Path]], spec_name: str, options: dict, teacher_key: str | None
    ) -> dict:
        headers = {TEACHER_KEY_HEADER: teacher_key} if teacher_key else {}
        handles = [(n, p.open("rb")) for n, p in files]
        try:
            return self.request(
                "POST",
                "/v1/jobs",
                headers=headers,
                data={"spec": spec_name, "options": json.dumps(options)},
                files=[("file", (n, f, "application/octet-stream")) for n, f in handles],
            ).json()
        finally:
            for _, f in handles:
                f.close()

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[str, dict]]:
        """(type, data) for each server-sent event until the stream ends."""
        path = f"/v1/jobs/{job_id}/events"
        try:
            with self.http.stream("GET", path, params={"after": after}, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _refusal(r)
                kind = "message"
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        yield kind, json.loads(line[6:])
        except self._httpx.HTTPError as e:
            raise ServiceError(
                f"lost the event stream of job {job_id}: {e}",
                hint=f"the job goes on; follow it with GET {path}",
            ) from None

    def download(self, job_id: str, name: str, dest: Path, artifact: bool = False) -> Path:
        """Write a job's file to `dest` via a .partial file and one rename."""
        path = f"/v1/jobs/{job_id}/artifact" if artifact else f"/v1/jobs/{job_id}/files/{name}"
        tmp = dest.with_name(dest.name + ".partial")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", path) as r:
            if r.status_code >= 400:
                r.read()
                raise _refusal(r)
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        tmp.replace(dest)
        return dest


def _refusal(r) -> KolmError:
    try:
        body = r.json()
        message, code = (
            body.get("error") or body.get("detail"),
            body.get("exit_code", ServiceError.exit_code),
        )
    except ValueError:
        message, code = r.text[:300], ServiceError.exit_code
    if code == ServiceError.exit_code:
        return ServiceError(f"kolm server refused ({r.status_code}): {message}")
    return RemoteError(str(message), int(code))


# -- compile --remote -----------------------------------------------------------------
def upload_list(task) -> list[tuple[str, Path]]:
    """(name relative to the spec's folder, path) for the spec and every file it names."""
    root = task.spec_path.parent
    paths = [task.spec_path, task.examples, task.unlabeled, task.verifier.json_schema]
    for entry in task.corpus:
        p = root / entry
        paths += (
            sorted(x for x in p.rglob("*") if x.is_file())
            if p.is_dir()
            else sorted(root.glob(entry))
        )
    out: dict[str, Path] = {}
    for p in (Path(x) for x in paths if x is not None):
        if p.is_symlink() or not p.resolve().is_relative_to(root.resolve()):
            raise ServiceError(
                f"{p}: a remote compile uploads only plain files inside the spec's folder {root}",
                hint="copy the file into it",
            )
        out[p.resolve().relative_to(root.resolve()).as_posix()] = p
    return sorted(out.items())


def teacher_key_for(task) -> str | None:
    """The local key of the spec's teacher provider, to send with the job (or None)."""
    if task.teacher is None:
        return None
    from kolm.teacher import TeacherRef, api_key

    return api_key(TeacherRef.parse(task.teacher.model).provider, required=False)


def compile_remote(
    url: str, task, out: Path, options: dict, log: Callable[[str], None], progress: bool
):
    """Run the compile on the server; return a CompileResult for the downloaded artifact."""
    client = Client(url, api_key_for(url))
    files = upload_list(task)
    spec_name = task.spec_path.name
    job = client.submit(files, spec_name, options, teacher_key_for(task))
    log(f"kolm: job {job['id']} queued on {client.url}")
    _follow(client, job["id"], log, progress)
    job = client.job(job["id"])
    result = job.get("result") or {}
    for name in result.get("files", []):
        if not name.endswith(".kolm"):
            client.download(job["id"], name, out.with_name(_renamed(name, out)))
    if job["state"] != "succeeded":
        raise RemoteError(
            job.get("error") or f"job {job['id']} {job['state']}", int(job.get("exit_code") or 1)
        )
    client.download(job["id"], result["artifact"], out, artifact=True)
    return _result(out, result, log)


def _renamed(name: str, out: Path) -> str:
    """`toy.report.html` from the server becomes `<out stem>.report.html` beside --out."""
    stem = out.name.removesuffix(".kolm")
    for suffix in (".report.html", ".report.md"):
        if name.endswith(suffix):
            return stem + suffix
    return name


def _follow(client: Client, job_id: str, log: Callable[[str], None], progress: bool) -> None:
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}
    try:
        for kind, data in client.events(job_id):
            if kind == "log":
                log(data["message"])
            elif kind == "progress" and progress and data.get("stage") in ("train", "label"):
                total = data.get("steps") or data.get("samples")
                bar = bars.get(data["stage"])
                if bar is None or bar.total != total:
                    bar = bars[data["stage"]] = tqdm(total=total, desc=data["stage"])
                bar.n = data.get("step") or data.get("done") or 0
                if "loss" in data:
                    bar.set_postfix(loss=data["loss"])
                bar.refresh()
            elif kind == "end" and data.get("state") == "needs_key":
                raise ServiceError(
                    f"job {job_id} waits for its teacher key",
                    hint=f"POST {client.url}/v1/jobs/{job_id}/key with the key",
                )
    finally:
        for bar in bars.values():
            bar.close()


def _result(out: Path, result: dict, log: Callable[[str], None]):
    import zipfile

    from kolm.artifact import MANIFEST, open_artifact
    from kolm.compiler import CompileResult

    try:
        manifest = open_artifact(out).manifest
    except SignatureError as e:
        if "does not trust" not in str(e):
            raise
        log(f"kolm: warning: {e.message}; `kolm login URL --trust` trusts the server's key")
        with zipfile.ZipFile(out) as z:
            manifest = json.loads(z.read(MANIFEST))
    report = out.with_name(out.name.removesuffix(".kolm") + ".report.html")
    return CompileResult(
        out,
        manifest,
        result["artifact_id"],
        result.get("timings", {}),
        bool(result.get("cached_training")),
        report if report.is_file() else None,
    )
