"""How the worker and the commands reach Temporal: the deployment config's [temporal] values,
overridden as the Temporal CLI overrides its own (profiles, TEMPORAL_* variables), and UI links
into the namespace actually used."""

from __future__ import annotations

from pathlib import Path

from temporalio.service import TLSConfig

from cli.common import ui_link
from core.temporal import CLOUD_UI, TemporalConnection
from rehearsal import pki


def test_the_config_holds_until_a_variable_says_otherwise() -> None:
    conn = TemporalConnection.from_env("temporal.internal:7233", "fleet", environ={})
    assert (conn.address, conn.namespace, conn.api_key, conn.tls) == (
        "temporal.internal:7233",
        "fleet",
        None,
        False,
    )
    env = {"TEMPORAL_ADDRESS": "other:7233", "TEMPORAL_NAMESPACE": "ops"}
    conn = TemporalConnection.from_env("temporal.internal:7233", "fleet", environ=env)
    assert (conn.address, conn.namespace) == ("other:7233", "ops")


def test_an_api_key_turns_tls_on() -> None:
    conn = TemporalConnection.from_env(environ={"TEMPORAL_API_KEY": "k"})
    assert conn.api_key == "k" and conn.tls is True


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    cert_pem, key_pem = pki.issue_device_cert(pki.load_or_create_ca(tmp_path / "ca"), "worker")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    return cert, key


def test_the_cli_tls_variables_and_the_older_names_give_mtls(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    for names in (
        ("TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH"),
        ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"),
    ):
        conn = TemporalConnection.from_env(environ={names[0]: str(cert), names[1]: str(key)})
        assert isinstance(conn.tls, TLSConfig), names
        assert conn.tls.client_cert == cert.read_bytes() and conn.tls.client_private_key == key.read_bytes()


def test_a_profile_of_the_cli_config_file_is_used(tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        '[profile.prod]\naddress = "fleet.a1b2c.tmprl.cloud:7233"\nnamespace = "fleet.a1b2c"\napi_key = "secret"\n'
    )
    env = {"TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "prod"}
    conn = TemporalConnection.from_env("127.0.0.1:7233", "default", environ=env)
    assert (conn.address, conn.namespace, conn.api_key, conn.tls) == (
        "fleet.a1b2c.tmprl.cloud:7233",
        "fleet.a1b2c",
        "secret",
        True,
    )
    assert conn.is_cloud


def test_ui_links_follow_the_namespace_and_cloud(config, monkeypatch) -> None:
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "ops")
    assert ui_link(config, "deployment-x") == "http://127.0.0.1:8233/namespaces/ops/workflows/deployment-x"
    monkeypatch.setenv("TEMPORAL_ADDRESS", "fleet.a1b2c.tmprl.cloud:7233")
    assert ui_link(config).startswith(f"{CLOUD_UI}/namespaces/ops/workflows")
    custom = config.model_copy(
        update={"temporal": config.temporal.model_copy(update={"ui_url": "https://ui.corp/"})}
    )
    assert ui_link(custom, "w") == "https://ui.corp/namespaces/ops/workflows/w"
