"""TorchServe's log configuration as ``serve start`` writes it: every line once, in the file of
its logger; stdout (``launcher.log``, never rolled) gets warnings and errors only."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from distillserve.archiver.properties import ServerConfig
from distillserve.serving.server import TorchServe
from distillserve.serving.server_logs import FILES, has_own_log_config, log_config


def test_every_logger_writes_once_to_its_own_rolling_file():
    root = ET.fromstring(log_config())
    appenders = {a.get("name"): a for a in root.find("Appenders")}
    assert set(FILES) <= set(appenders) and "STDOUT" in appenders
    for name, appender in appenders.items():
        if name != "STDOUT":  # the same file names and roll-over as TorchServe's own config
            assert appender.get("fileName").endswith(f"/{name}.log")
            assert appender.find("Policies/SizeBasedTriggeringPolicy").get("size") == "100 MB"
    loggers = root.find("Loggers")
    for logger in loggers.findall("Logger"):
        refs = logger.findall("AppenderRef")
        if not refs:  # io.netty, org.apache: levels only
            continue
        assert logger.get("additivity") == "false", logger.get("name")
        files = [r.get("ref") for r in refs if r.get("ref") != "STDOUT"]
        assert len(files) == 1 and files[0] in FILES, logger.get("name")
        stdout = [r for r in refs if r.get("ref") == "STDOUT"]
        assert all(r.get("level") == "warn" for r in stdout)
    levels = {lg.get("name"): lg.get("level") for lg in loggers.findall("Logger")}
    assert levels["org.pytorch.serve"] == "info"  # not TorchServe's DEBUG
    assert levels["MODEL_METRICS"] == "all"  # the handler's metrics, which the bench reads
    console = [r for r in loggers.find("Root") if r.get("ref") == "STDOUT"]
    assert console and console[0].get("level") == "warn"


def test_serve_start_passes_it_unless_the_config_names_its_own(tmp_path):
    store = tmp_path / "store"
    for folder in (store, tmp_path / "run", tmp_path / "run2"):  # start() makes them first
        folder.mkdir()
    plain = ServerConfig.with_free_ports(store).write(tmp_path / "plain.properties")
    command = TorchServe(plain, tmp_path / "run", store)._start_command()
    config = command[command.index("--log-config") + 1]
    assert ET.parse(config).getroot().tag == "Configuration"

    own = "-Dlog4j.configurationFile=file:///etc/mine.xml"
    assert has_own_log_config({"vmargs": f"-Xmx1g {own}"})
    theirs = ServerConfig.with_free_ports(store, extra={"vmargs": own})
    path = theirs.write(tmp_path / "theirs.properties")
    assert "--log-config" not in TorchServe(path, tmp_path / "run2", store)._start_command()
