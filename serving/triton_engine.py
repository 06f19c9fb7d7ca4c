"""Start, stop and watch a Triton Inference Server (the bundled one, ``triton_env``) on a model
repository written by ``archiver.triton.export_triton``.

One run directory per server, as for TorchServe: ``engine.json`` (pid, addresses, repository),
``triton.log``, the backend directory with this Python's stub and the server's shared-memory
prefix (the Python backend keeps its regions in ``/dev/shm``; they are removed at stop).
Readiness is polled, never slept for: the server is up when every model of the repository is
READY, and a model that fails to load stops the start with its own reason (for example the
handler's signature check: ``IntegrityError: changed since signing: model.onnx``).

The server runs in Triton's explicit model-control mode with every model of the repository
loaded at start, so that ``load`` and ``unload`` (the model-repository API) can add, swap and
retire versions while it serves (``serving.triton_versions``). When every model of the
repository is ONNX, the model processes run where torch cannot be imported (as in the image
``export-triton --deploy`` writes for them): a fifth of the memory, less CPU per request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests

from distillserve.archiver.properties import free_port
from distillserve.archiver.signing import Trust
from distillserve.archiver.triton import needs_torch
from distillserve.errors import ServerError
from distillserve.handlers.integrity import PUBLIC_KEY_ENV
from distillserve.serving.triton_env import find_dist

__all__ = ["TritonAddresses", "TritonEngine"]

STATE_FILE = "engine.json"
# Triton's log line for a model that failed to load, up to the traceback it appends
_LOAD_FAILURE = re.compile(
    r"failed to load '(?P<model>[^']+)' version \d+: (?P<reason>.*?)(\\n|\"$)"
)


@dataclass(frozen=True)
class TritonAddresses:
    """Where the server listens (loopback unless told otherwise)."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonAddresses:
        return cls(host, free_port(), free_port(), free_port())

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class TritonEngine:
    """One tritonserver process serving ``repository`` from its own ``run_dir``; each model's
    handler verifies its archive's files against ``trust`` when Triton loads it."""

    def __init__(
        self,
        repository: str | Path,
        run_dir: str | Path,
        addresses: TritonAddresses | None = None,
        trust: Trust | None = None,
        without_torch: bool | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        # the model processes in the environment that cannot import torch, as on the torch-free
        # image export-triton --deploy writes for ONNX students; None: there when every model
        # of the repository is ONNX (decided at start)
        self.without_torch = without_torch
        self.run_dir = Path(run_dir).resolve()
        self.addresses = addresses or TritonAddresses()
        self.trust = trust or Trust.resolve()
        self.log_file = self.run_dir / "triton.log"

    @classmethod
    def attach(cls, run_dir: str | Path) -> TritonEngine:
        """The engine a ``serve start --engine triton`` left in ``run_dir``."""
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
        addresses = TritonAddresses(**state["addresses"])
        return cls(
            state["repository"], run_dir, addresses, without_torch=state.get("without_torch", False)
        )

    @property
    def models(self) -> list[str]:
        return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))

    def pid(self) -> int | None:
        try:
            pid = int(json.loads((self.run_dir / STATE_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        try:
            running = (
                psutil.Process(pid).is_running() and "tritonserver" in psutil.Process(pid).name()
            )
        except psutil.Error:
            return None
        return pid if running else None

    def start(self, timeout: float = 180.0) -> None:
        """Start tritonserver and wait until every model is READY (``ServerError`` with the
        failing model's reason, or the log's last lines, otherwise)."""
        if self.pid() is not None:
            raise ServerError(f"a Triton engine is already running from {self.run_dir}")
        if not self.models:
            raise ServerError(f"no models in {self.repository} (distillserve export-triton)")
        if self.without_torch is None:
            self.without_torch = not needs_torch(self.repository)
        dist = find_dist(without_torch=self.without_torch)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shm_prefix = f"distillserve_{uuid.uuid4().hex[:8]}_"
        a = self.addresses
        command = [
            str(dist.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--backend-directory={dist.backends(self.run_dir / 'backends')}",
            f"--http-address={a.host}", f"--http-port={a.http_port}",
            f"--grpc-address={a.host}", f"--grpc-port={a.grpc_port}",
            f"--metrics-address={a.host}", f"--metrics-port={a.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        ]  # fmt: skip
        trust = {k: str(Path(v).resolve()) if k == PUBLIC_KEY_ENV else v
                 for k, v in self.trust.environment().items()}  # fmt: skip
        env = dist.environment({**os.environ, **trust})
        with open(self.log_file, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.run_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state = {
            "pid": process.pid,
            "repository": str(self.repository),
            "addresses": asdict(a),
            "shm_prefix": shm_prefix,
            "without_torch": self.without_torch,
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        try:
            self._wait_ready(process, timeout)
        except ServerError:
            self.stop()
            raise

    def _wait_ready(self, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerError(f"tritonserver exited ({process.returncode}): {self._cause()}")
            states = self.model_states()
            failed = {m: s for m, s in states.items() if s.get("state") == "UNAVAILABLE"}
            if failed:
                model, state = next(iter(failed.items()))
                raise ServerError(f"{model} failed to load: {_reason(state.get('reason', ''))}")
            ready = states and all(s.get("state") == "READY" for s in states.values())
            if ready and len(states) >= len(self.models) and self._ready():
                return
            time.sleep(0.25)
        raise ServerError(f"Triton not ready after {timeout:.0f} s: {self._cause()}")

    def _ready(self) -> bool:
        try:
            url = f"{self.addresses.http_url}/v2/health/ready"
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def repository_index(self) -> list[dict]:
        """Triton's repository index: one entry per model version (name, version, state and,
        when it failed, why); empty when the server does not answer."""
        try:
            answer = requests.post(f"{self.addresses.http_url}/v2/repository/index", timeout=2)
            index = answer.json() if answer.status_code == 200 else []
        except (requests.RequestException, ValueError):
            return []
        return [entry for entry in index if "name" in entry]

    def model_states(self) -> dict[str, dict]:
        """The repository index by model: each model's state and, when it failed, why (a
        model with a version not READY shows that version)."""
        states: dict[str, dict] = {}
        for entry in self.repository_index():
            kept = states.get(entry["name"])
            if kept is None or kept.get("state") == "READY":
                states[entry["name"]] = entry
        return states

    def load(self, model: str, timeout: float = 300.0) -> None:
        """(Re)load ``model`` from the repository as it is now: Triton loads what is new or
        changed, retires the versions no longer there, and keeps serving throughout; when the
        load fails, what was loaded stays (``ServerError`` with Triton's reason)."""
        self._control(model, "load", timeout)

    def unload(self, model: str, timeout: float = 120.0) -> None:
        """Stop serving ``model`` (every version); requests in flight are answered first."""
        self._control(model, "unload", timeout)

    def _control(self, model: str, action: str, timeout: float) -> None:
        url = f"{self.addresses.http_url}/v2/repository/models/{model}/{action}"
        try:
            answer = requests.post(url, timeout=timeout)
        except requests.RequestException as err:
            where = self.addresses.http_url
            raise ServerError(f"Triton at {where} does not answer: {err}") from None
        if answer.status_code != 200:
            try:
                reason = answer.json().get("error", answer.text)
            except ValueError:
                reason = answer.text
            raise ServerError(f"Triton could not {action} {model}: {_reason(reason)}")

    def _cause(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        for line in reversed(lines):  # a model's load failure says the most
            found = _LOAD_FAILURE.search(line)
            if found:
                return f"{found['model']} failed to load: {found['reason']}"
        errors = [line for line in lines if line.startswith("E") or "rror" in line]
        return (errors or lines or ["empty log"])[-1].strip()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server and its model stubs; returns whether one was running."""
        pid = self.pid()
        state = self._state()
        if pid is not None:
            process = psutil.Process(pid)
            children = process.children(recursive=True)
            os.kill(pid, signal.SIGTERM)
            _, alive = psutil.wait_procs([process, *children], timeout)
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        prefix = state.get("shm_prefix")
        if prefix:
            for region in Path("/dev/shm").glob(f"{prefix}*"):
                region.unlink(missing_ok=True)
        # the run directory no longer names a Triton engine (``serve`` dispatches on this file)
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)
        return pid is not None

    def _state(self) -> dict:
        try:
            return json.loads((self.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def status(self) -> dict:
        pid = self.pid()
        return {
            "engine": "triton",
            "running": pid is not None,
            "pid": pid,
            "without_torch": self.without_torch,
            "http": self.addresses.http_url,
            "grpc": self.addresses.grpc_target,
            "metrics": self.addresses.metrics_url,
            "models": self.model_states() if pid else {},
        }

    def describe(self, model: str, parts: tuple[str, ...] = ("metadata", "config", "stats")):
        """Triton's own view of ``model``: its metadata (inputs, outputs, versions), its
        configuration and its statistics, or those of ``parts``; ``ServerError`` naming the
        models it has."""
        base = f"{self.addresses.http_url}/v2/models/{model}"
        paths = {"metadata": "", "config": "/config", "stats": "/stats"}
        try:
            answers = {part: requests.get(f"{base}{paths[part]}", timeout=10) for part in parts}
        except requests.RequestException as err:
            where = self.addresses.http_url
            raise ServerError(f"Triton at {where} does not answer: {err}") from None
        if any(answer.status_code != 200 for answer in answers.values()):
            known = ", ".join(sorted(self.model_states())) or "none"
            raise ServerError(f"Triton has no model {model!r} (it has: {known})")
        return {part: answer.json() for part, answer in answers.items()}

    def __enter__(self) -> TritonEngine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _reason(text: str) -> str:
    """The last line of a load failure (Triton prefixes the stub's traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
