"""The Python API: what the CLI does, as functions and one object.

    import kolm
    with kolm.load("support.kolm", threads=1) as model:
        print(model.run("My card was charged twice").output)

`load` verifies an artifact and loads it in llama.cpp (`Model`); `Model.stream` hands
an answer out piece by piece as it is decoded (`Stream`); `compile` takes
the same arguments as `kolm compile` — a spec file, or a task description with an
examples folder. `kolm/__init__.py` exports these lazily, so `import kolm` loads
neither torch nor llama.cpp. Knows the library's entry points (runner, compiler,
quickstart, receipts); knows nothing of HTTP or the command line.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kolm.errors import InputError, SpecError

if TYPE_CHECKING:
    from kolm.runner import Result, Runner

StrPath = str | Path


class Model:
    """A loaded artifact that answers, writes receipts and logs drift, like `kolm run`.

    Not thread-safe (one llama.cpp context); close it, or use it as a context manager."""

    def __init__(
        self,
        path: StrPath,
        *,
        base: StrPath | None = None,
        threads: int | None = None,
        receipts: StrPath | bool = True,
        store_io: bool = True,
        drift: StrPath | bool = True,
        fallback: str | None = None,
        min_confidence: float = 0.3,
        recipes: bool = True,
    ):
        from kolm.drift import DriftStore
        from kolm.receipts import ReceiptStore
        from kolm.runner import Runner

        self.path = Path(path)
        self.receipts = _store(ReceiptStore, receipts, store_io=store_io)
        """The receipts store answers are written to (None with `receipts=False`)."""
        self._runner = Runner(
            self.path,
            base=Path(base) if base else None,
            threads=threads,
            receipts=self.receipts,
            drift=_store(DriftStore, drift),
            fallback=fallback,
            min_confidence=min_confidence,
            recipes=recipes,
        )
        self._stream: Stream | None = None

    @property
    def manifest(self) -> dict:
        """The artifact's verified manifest."""
        return self._runner.artifact.manifest

    @property
    def id(self) -> str:
        return self._runner.artifact.id

    def run(self, text: str):
        """Answer one input (a `runner.Result`: output, path, verified, receipt, ...)."""
        self._end_stream()
        return self._runner(text)

    def stream(self, text: str) -> Stream:
        """Answer one input piece by piece: iterate the `Stream` for text as it is decoded,
        then read its `result` (what `run` returns, receipt included)."""
        self._end_stream()
        self._stream = Stream(self._runner, text)
        return self._stream

    def run_batch(self, texts: Iterable[str]) -> list:
        """Answer each input in order. An input that cannot be answered gets its
        `InputError` in its place (as `kolm run --input` writes an error line)."""
        self._end_stream()
        out: list = []
        for text in texts:
            try:
                out.append(self._runner(text))
            except InputError as e:
                out.append(e)
        return out

    def verify(self) -> dict:
        """Check the file's signature and every part's hash again (as `kolm verify`)."""
        from kolm.artifact import open_artifact

        art = open_artifact(self.path)
        return {
            "id": art.id,
            "signed_by": art.verified.key_id,
            "trust": art.verified.trust,
            "parts": {n: art.manifest["parts"][n]["sha256"] for n in art.part_names()},
        }

    def close(self) -> None:
        self._end_stream()
        self._runner.close()

    def _end_stream(self) -> None:
        """The model answers one thing at a time: a stream still open is closed first."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Stream:
    """One answer handed out as it is decoded: iterate for its text, then read `result`.

        stream = model.stream("My card was charged twice")
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result.receipt)

    The pieces (whole characters, never empty) add up to `result.output`, the answer
    `run` gives. The model decodes in a thread of its own while the caller reads; the
    receipt is written in the caller's thread once the last piece is taken, or when
    `result` is read (which waits for the answer). `close` (also done by the model's
    next call) lets the answer finish unread and, when pieces were left unread, marks
    the receipt incomplete, as `kolm serve` does for a client that left. An input that
    cannot be answered raises its `InputError` from the iteration (and from `result`)."""

    def __init__(self, runner: Runner, text: str):
        self._runner = runner
        self._items: queue.Queue = queue.Queue()
        self._outcome: tuple[str, object] | None = None
        self._thread = threading.Thread(
            target=self._answer, args=(text,), name="kolm-stream", daemon=True
        )
        self._thread.start()

    def _answer(self, text: str) -> None:
        try:
            answered = self._runner.answer(text, on_delta=self._piece)
        except BaseException as e:  # handed to the caller's thread, raised there
            self._items.put(("error", e))
        else:
            self._items.put(("answered", answered))

    def _piece(self, text: str) -> None:
        if text:
            self._items.put(("piece", text))

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._outcome is None:
            kind, value = self._items.get()
            if kind == "piece":
                return value
            self._settle(kind, value, delivered=True)
        self._raise_error()
        raise StopIteration

    @property
    def result(self) -> Result:
        """The answer as `run` returns it (a `runner.Result`, receipt written); waits for it."""
        self._finish(delivered=True)
        self._raise_error()
        return self._outcome[1]

    def close(self) -> None:
        """Stop reading: the answer finishes unread, and its receipt is marked incomplete
        when pieces were left. Does not raise the answer's error (`result` does)."""
        self._finish(delivered=False)

    def _finish(self, delivered: bool) -> None:
        """Take what is left of the answer; `delivered`: the caller gets it (in `result`)."""
        left_unread = False
        while self._outcome is None:
            kind, value = self._items.get()
            if kind == "piece":
                left_unread = True
            else:
                self._settle(kind, value, delivered or not left_unread)

    def _settle(self, kind: str, value, delivered: bool) -> None:
        self._thread.join()
        if kind == "answered":
            try:
                value = self._runner.record(value, incomplete=not delivered)
            except BaseException as e:
                kind, value = "error", e
        self._outcome = (kind, value)

    def _raise_error(self) -> None:
        if self._outcome is not None and self._outcome[0] == "error":
            raise self._outcome[1]


def _store(cls, where: StrPath | bool, **kw):
    if where is False:
        return None
    return cls(None if where is True else Path(where), **kw)


def load(path: StrPath, **opts) -> Model:
    """Verify and load an artifact; `opts` are `Model`'s (threads, receipts, base, ...)."""
    return Model(path, **opts)


def load_task(
    spec: StrPath,
    *,
    steps: int | None = None,
    teacher: str | None = None,
    k: int | None = None,
    min_agreement: float | None = None,
    quantize: str | None = None,
):
    """A spec file with the CLI's overrides applied (`--steps`, `--teacher`, ...)."""
    from kolm.spec import TeacherConfig, load_spec

    task = load_spec(spec)
    if steps is not None:
        task = dataclasses.replace(task, train=task.train.with_settings(steps=steps))
    if teacher is not None:
        t = task.teacher or TeacherConfig(model=teacher)
        task = dataclasses.replace(task, teacher=dataclasses.replace(t, model=teacher))
    if task.teacher is not None and (k is not None or min_agreement is not None):
        t = dataclasses.replace(
            task.teacher,
            k=task.teacher.k if k is None else k,
            min_agreement=task.teacher.min_agreement if min_agreement is None else min_agreement,
        )
        task = dataclasses.replace(task, teacher=t)
    if quantize is not None:
        task = dataclasses.replace(task, quantize=quantize)
    return task


def quick_spec(
    task: str,
    examples: StrPath,
    out_dir: StrPath,
    *,
    name: str | None = None,
    base: str | None = None,
    teacher: str | None = None,
    steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Read an examples folder, report what was found through `log`, write a spec; its path."""
    from kolm.quickstart import scan, write_spec

    found = scan(Path(examples))
    for line in found.lines():
        (log or _quiet)(line)
    return write_spec(
        found, task, Path(out_dir), name=name, base=base, teacher=teacher, steps=steps
    )


def _quiet(_: str) -> None:
    pass


def compile(  # noqa: A001 - the CLI's verb, on purpose
    spec_or_task: StrPath,
    *,
    examples: StrPath | None = None,
    out: StrPath | None = None,
    name: str | None = None,
    base: str | None = None,
    teacher: str | None = None,
    steps: int | None = None,
    work_dir: StrPath | None = None,
    embed_base: bool = True,
    cache: StrPath | None = None,
    force: bool = False,
    drift_inputs: list[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    quantize: str | None = None,
    remote: str | None = None,
):
    """Compile like `kolm compile`: SPEC_OR_TASK is a kolm.yaml, or (with `examples`) a task
    description. Returns the `compiler.CompileResult`; below the gate raises GateError.

    `remote` (a `kolm server` URL) compiles there instead, with the spec as written plus
    `steps` and `force`; the key comes from $KOLM_API_KEY or `kolm login`."""
    from kolm.compiler import compile_task

    is_spec = Path(spec_or_task).is_file()
    if is_spec and examples is not None:
        raise SpecError(
            [f"{spec_or_task} is a spec file, which names its own examples: drop examples"]
        )
    if not is_spec and examples is None:
        raise SpecError(
            [
                f"{spec_or_task!s:.60}: no such spec file; a task description needs examples "
                '(kolm compile "TASK DESCRIPTION" --examples DIR)'
            ]
        )
    if is_spec:
        if base is not None or name is not None:
            raise SpecError(["base and name are set in the spec file, not beside it"])
        task = load_task(spec_or_task, steps=steps, teacher=teacher, quantize=quantize)
        work = Path(work_dir) if work_dir else None
    else:
        spec_name = name or _folder_name(examples)
        work = Path(work_dir) if work_dir else Path(".kolm-work") / spec_name
        spec = quick_spec(
            str(spec_or_task), examples, work / "spec", name=spec_name, base=base,
            teacher=teacher, steps=steps, log=log,
        )  # fmt: skip
        task = load_task(spec, quantize=quantize)
    target = Path(out) if out else Path(f"{task.name}.kolm")
    if remote:
        from kolm.compiler import _stderr
        from kolm.service.client import compile_remote

        options = {"force": force, "steps": steps}
        return compile_remote(remote, task, target, options, log or _stderr, progress)
    kw = {"log": log} if log else {}
    return compile_task(
        task,
        target,
        work_dir=work,
        embed_base=embed_base,
        progress=progress,
        cache_path=Path(cache) if cache else None,
        force=force,
        extra_inputs=drift_inputs,
        **kw,
    )


def _folder_name(examples: StrPath | None) -> str:
    from kolm.quickstart import task_name

    return task_name(Path(examples or ".").resolve().name)
