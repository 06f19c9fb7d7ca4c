"""Start, stop and watch a TorchServe instance.

Each server gets a *run directory* holding its private ``TMPDIR`` (TorchServe keeps its pid file
in ``tempfile.gettempdir()``, so one directory = one server), its logs, and the ``key_file.json``
that token authorization writes into the launch directory. Readiness is polled, never slept for.

``archiver.properties.ServerConfig`` renders a ``config.properties``; tests use it with free
loopback ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from distillserve.archiver.mar import inspect_archive
from distillserve.archiver.properties import PATH_KEYS, read_properties, write_properties
from distillserve.archiver.signing import Trust
from distillserve.errors import ServerError
from distillserve.handlers.integrity import ALLOW_UNSIGNED_ENV, PUBLIC_KEY_ENV
from distillserve.handlers.serving_policy import usable_cores
from distillserve.serving.server_logs import has_own_log_config, write_log_config
from distillserve.serving.startup import check_ports, startup_cause

__all__ = ["TorchServe"]


class TorchServe:
    """One TorchServe process driven through its own run directory. ``archives`` (file names
    in the model store) are loaded at start instead of the config's ``load_models``/``models=``,
    with the config's other settings (``serve start --models``). Every archive it loads at
    start is verified first against ``trust`` (default: the config's
    ``distillserve_public_key``), which the workers' handlers inherit."""

    def __init__(
        self,
        config_file: str | Path,
        run_dir: str | Path,
        model_store: str | Path | None = None,
        archives: list[str] | None = None,
        trust: Trust | None = None,
    ) -> None:
        self.archives = archives
        self.config_file = Path(config_file).resolve()
        self.props = read_properties(self.config_file)
        self.trust = trust or Trust.resolve(props=self.props, base=self.config_file.parent)
        self.run_dir = Path(run_dir).resolve()
        if model_store is None:  # relative to the config file, like TorchServe's other paths here
            store = Path(self.props.get("model_store", "model_store"))
            model_store = store if store.is_absolute() else self.config_file.parent / store
        self.model_store = Path(model_store).resolve()
        self.inference_url = self.props.get("inference_address", "http://127.0.0.1:8080")
        self.management_url = self.props.get("management_address", "http://127.0.0.1:8081")
        self.metrics_url = self.props.get("metrics_address", "http://127.0.0.1:8082")
        self.token_auth = self.props.get("disable_token_authorization", "false").lower() != "true"

    # -- paths -------------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The frontend puts its workers' unix sockets in java.io.tmpdir (/tmp by default, shared
        # by every server on the host): keep them in this server's own directory as well.
        java_options = f"{env.get('JAVA_TOOL_OPTIONS', '')} -Djava.io.tmpdir={self.tmp_dir}"
        env.update(
            JAVA_TOOL_OPTIONS=java_options.strip(),
            TMPDIR=str(self.tmp_dir),
            LOG_LOCATION=str(self.log_dir),
            METRICS_LOCATION=str(self.log_dir),
            PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning",
        )
        for name in (PUBLIC_KEY_ENV, ALLOW_UNSIGNED_ENV):
            env.pop(name, None)  # the handlers get this server's trust, not the caller's
        env.update(self.trust.environment())
        return env

    def _effective_config(self) -> Path:
        """The config as TorchServe must see it from the run directory: file paths that are
        relative in the config file are made relative to that file, not to the launch dir."""
        props = dict(self.props)
        if self.archives is not None:  # their own model-config.yaml sets batching and workers
            props.pop("models", None)
            props["load_models"] = ",".join(self.archives)
        # an archive of 'auto' workers names none: one per core of this (the serving) host,
        # at start-up and for registrations that name no initial_workers
        props.setdefault("default_workers_per_model", str(usable_cores()))
        for key in PATH_KEYS:
            value = props.get(key)
            if value and not Path(value).is_absolute():
                props[key] = str((self.config_file.parent / value).resolve())
        return write_properties(props, self.run_dir / "effective-config.properties")

    def _torchserve(self) -> str:
        found = Path(sys.executable).parent / "torchserve"
        return str(found) if found.exists() else (shutil.which("torchserve") or "torchserve")

    # -- state -------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The frontend's pid if it is running, else None."""
        pid_file = self.tmp_dir / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            return pid if psutil.Process(pid).is_running() else None
        except (OSError, ValueError, psutil.Error):
            return None

    def keys(self) -> dict[str, str]:
        """The inference, management and API keys from ``key_file.json``."""
        try:
            data = json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            raise ServerError(
                f"no token file at {self.key_file}: is the server running with token auth?"
            ) from None
        return {
            role: data[role]["key"] for role in ("inference", "management", "API") if role in data
        }

    def management_client(self):
        """A management API client with this server's management key."""
        from distillserve.serving.management import ManagementClient

        return ManagementClient(
            self.management_url, self.keys()["management"] if self.token_auth else None
        )

    def headers(self, role: str = "inference") -> dict[str, str]:
        """The Authorization header for ``role``; none when token authorization is off."""
        return {"Authorization": f"Bearer {self.keys()[role]}"} if self.token_auth else {}

    def startup_archives(self) -> list[str]:
        """The archive files ``load_models`` and ``models=`` name (``all`` names none: it loads
        whatever the store holds)."""
        if self.archives is not None:
            return list(self.archives)
        names: list[str] = []
        for entry in self.props.get("load_models", "").split(","):
            entry = entry.strip()
            if entry and entry not in ("all", "ALL", "standalone"):
                names.append(entry.split("=", 1)[-1])  # NAME=FILE.mar or FILE.mar
        try:
            models = json.loads(self.props.get("models") or "{}")
        except ValueError:
            raise ServerError(f"{self.config_file.name}: models= is not valid JSON") from None
        for versions in models.values() if isinstance(models, dict) else []:
            for spec in versions.values() if isinstance(versions, dict) else []:
                if isinstance(spec, dict) and spec.get("marName"):
                    names.append(spec["marName"])
        return list(dict.fromkeys(n for n in names if "://" not in n))

    def verify_startup_archives(self) -> None:
        """``ArchiveError`` for the first archive loaded at start that is altered, or unsigned
        where unsigned ones are not allowed (``load_models=all``: every archive in the store)."""
        names = self.startup_archives()
        loads_all = self.archives is None and any(
            entry.strip().lower() == "all" for entry in self.props.get("load_models", "").split(",")
        )
        paths = sorted(self.model_store.glob("*.mar")) if loads_all else []
        for path in [*(self.model_store / name for name in names), *paths]:
            inspect_archive(path, self.trust)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 180.0, models: list[str] | None = None) -> None:
        """Start TorchServe and wait until it is healthy and every model has a ready worker."""
        if self.pid() is not None:
            raise ServerError(f"a TorchServe is already running from {self.run_dir}")
        if len(str(self.tmp_dir / ".ts.sock.65535")) > 100:
            raise ServerError(
                f"run directory path is too long for the workers' unix sockets "
                f"({len(str(self.run_dir))} characters): choose a shorter --run-dir"
            )
        if not self.model_store.is_dir():
            raise ServerError(f"model store not found: {self.model_store}")
        missing = [
            name for name in self.startup_archives() if not (self.model_store / name).exists()
        ]
        if missing:
            raise ServerError(
                f"{self.config_file.name} loads {', '.join(missing)} at start, but "
                f"{self.model_store} has no such archive: build it (distillserve archive), or "
                "serve your own archives with serve start --models A.mar,B.mar (or a folder)"
            )
        self.verify_startup_archives()
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ServerError("java not found: TorchServe needs Java 17 on PATH or JAVA_HOME")
        check_ports(self.props, self.config_file.name, self.run_dir)
        for directory in (self.run_dir, self.tmp_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        with open(self.log_dir / "launcher.log", "ab") as out:
            code = subprocess.call(
                self._start_command(),
                cwd=self.run_dir,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            raise ServerError(
                f"torchserve --start exited with {code}{self._cause()}; see {self.log_dir}"
            )
        try:
            self.wait_ready(timeout, models)
        except BaseException:
            self.stop()
            raise

    def _start_command(self) -> list[str]:
        """``torchserve --start`` on the effective config, with our log configuration unless
        the config names its own (``serving.server_logs``)."""
        command = [
            self._torchserve(),
            "--start",
            "--ncs",
            "--ts-config",
            str(self._effective_config()),
            "--model-store",
            str(self.model_store),
        ]
        if not has_own_log_config(self.props):  # each log line once
            command += ["--log-config", str(write_log_config(self.run_dir))]
        return command

    def wait_ready(self, timeout: float = 180.0, models: list[str] | None = None) -> None:
        """Poll /ping and each model's workers until all are ready, or raise after ``timeout``."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServerError(
                    f"TorchServe exited during start-up{self._cause()}; see {self.log_dir}"
                )
            try:
                if (self.key_file.exists() or not self.token_auth) and self._ready(models):
                    return
                last = "models still loading"
            except (requests.RequestException, ServerError, KeyError) as err:
                last = str(err).splitlines()[0]
            time.sleep(0.25)
        raise ServerError(f"TorchServe not ready after {timeout:.0f}s ({last}); see {self.log_dir}")

    def _cause(self) -> str:
        """``: <the log line that says why>`` when the logs say it."""
        cause = startup_cause(self.log_dir)
        return f": {cause}" if cause else ""

    def _ready(self, models: list[str] | None) -> bool:
        ping = requests.get(f"{self.inference_url}/ping", headers=self.headers(), timeout=5)
        if ping.status_code != 200 or ping.json().get("status") != "Healthy":
            return False
        described = self._describe_all()
        names = list(described) if models is None else models
        return all(
            name in described
            and all("READY" in version["workers"] for version in described[name].values())
            for name in names
        )

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the server and its workers; returns whether one was running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            process = psutil.Process(pid)
            children = process.children(recursive=True)
        except psutil.Error:
            children = []
        subprocess.call(
            [self._torchserve(), "--stop"],
            cwd=self.run_dir,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, alive = psutil.wait_procs(
            [psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout
        )
        for proc in alive + children:
            try:
                proc.kill()
            except psutil.Error:
                pass
        return True

    def status(self) -> dict:
        """Whether it runs, where, and the models with their worker states."""
        pid = self.pid()
        info: dict = {
            "running": pid is not None,
            "pid": pid,
            "run_dir": str(self.run_dir),
            "token_file": str(self.key_file),
            "inference": self.inference_url,
            "management": self.management_url,
            "metrics": self.metrics_url,
            "models": {},
        }
        if pid is None:
            return info
        try:
            info["models"] = self._describe_all()
        except (requests.RequestException, ValueError, KeyError, TypeError) as err:
            raise ServerError(f"TorchServe (pid {pid}) does not answer properly: {err}") from None
        return info

    def _describe_all(self) -> dict:
        models = {}
        listing = requests.get(
            f"{self.management_url}/models", headers=self.headers("management"), timeout=5
        )
        for model in listing.json().get("models", []):
            described = requests.get(
                f"{self.management_url}/models/{model['modelName']}/all",
                headers=self.headers("management"),
                timeout=5,
            ).json()
            models[model["modelName"]] = {
                v["modelVersion"]: {
                    "batch_size": v.get("batchSize"),
                    "max_batch_delay": v.get("maxBatchDelay"),
                    "workers": [w.get("status") for w in v.get("workers", [])],
                }
                for v in described
            }
        return models

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
