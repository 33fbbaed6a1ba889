"""API keys without Ray: digests only in settings, matching, roles, patterns, start-up refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lancedb_ray import cli
from lancedb_ray.api.auth import authorize, identify
from lancedb_ray.errors import Forbidden, Unauthorized
from lancedb_ray.keys import check_serving
from lancedb_ray.settings import DEV_KEY, ApiKey, Role, SecretNotShared, Settings, key_digest


def test_keys_create_stores_the_digest_and_prints_the_key_last(tmp_path: Path, capsys) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("server:\n  port: 9000\n")
    assert cli.main(["keys", "create", "--config", str(config), "--name", "acme-writer",
                     "--databases", "acme,acme-*", "--role", "write"]) == 0
    key = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
    assert key.startswith("lrk_") and len(key) > 40
    text = config.read_text()
    assert key not in text
    data = yaml.safe_load(text)
    assert data["server"]["port"] == 9000
    assert data["server"]["api_keys"] == [{"name": "acme-writer", "sha256": key_digest(key),
                                           "databases": ["acme", "acme-*"], "role": "write"}]
    settings = Settings.load(config)
    found = identify(settings, key)
    assert found.name == "acme-writer" and found.role is Role.WRITE
    authorize(found, Role.WRITE, "acme-eu")
    with pytest.raises(Forbidden):
        authorize(found, Role.WRITE, "acmex")
    # a second key is added beside the first; a repeated name is refused
    assert cli.main(["keys", "create", "--config", str(config), "--name", "ops",
                     "--databases", "*", "--role", "admin"]) == 0
    assert len(Settings.load(config).server.api_keys) == 2
    assert cli.main(["keys", "create", "--config", str(config), "--name", "ops",
                     "--databases", "*"]) == 2
    assert cli.main(["keys", "create", "--config", str(config), "--name", "bad",
                     "--databases", "../x"]) == 2
    assert len(Settings.load(config).server.api_keys) == 2


@pytest.mark.parametrize("presented", [None, "", "caf\u00e9", "x" * 257, "a\tb", "wrong"])
def test_missing_malformed_and_unknown_keys_are_401(presented: str | None) -> None:
    settings = Settings.load(None, server={"api_keys": ["right"]})
    with pytest.raises(Unauthorized):
        identify(settings, presented)


def test_every_entry_is_checked_and_the_matching_one_returned() -> None:
    entries = [{"name": f"k{i}", "sha256": key_digest(f"key-{i}"), "databases": ["*"],
                "role": "read"} for i in range(5)]
    settings = Settings.load(None, server={"api_keys": entries})
    assert [identify(settings, f"key-{i}").name for i in range(5)] == [f"k{i}" for i in range(5)]


def test_roles_and_patterns() -> None:
    reader = ApiKey(name="r", sha256=key_digest("r"), databases=["shop", "eu-*"], role=Role.READ)
    authorize(reader, Role.READ, "shop")
    authorize(reader, Role.READ, "eu-west")
    for role, database in ((Role.WRITE, "shop"), (Role.ADMIN, None), (Role.READ, "shop2"),
                           (Role.READ, "eu")):
        with pytest.raises(Forbidden):
            authorize(reader, role, database)
    with pytest.raises(ValidationError):
        ApiKey(name="x", sha256=key_digest("x"), databases=["a/b"])
    with pytest.raises(ValidationError):
        ApiKey(name="x", sha256="not-a-digest", databases=["*"])


def test_a_clear_key_in_settings_keeps_only_its_digest() -> None:
    settings = Settings.load(None, server={"api_keys": ["s3cret-key"]})
    assert "s3cret-key" not in repr(settings.to_plain())
    (entry,) = settings.server.api_keys
    assert entry.sha256 == key_digest("s3cret-key") and entry.role is Role.ADMIN


def test_serving_refuses_no_keys_and_the_dev_key_off_loopback() -> None:
    check_serving(Settings.load(None))  # the defaults: dev key on 127.0.0.1
    check_serving(Settings.load(None, server={"host": "::1"}))
    with pytest.raises(ValueError, match="empty"):
        check_serving(Settings.load(None, server={"api_keys": []}))
    for host in ("0.0.0.0", "10.0.0.5", "example.com"):
        with pytest.raises(ValueError, match="only on loopback"):
            check_serving(Settings.load(None, server={"host": host}))
        with pytest.raises(ValueError, match="only on loopback"):
            check_serving(Settings.load(None, server={"host": host, "api_keys": ["mine", DEV_KEY]}))
        check_serving(Settings.load(None, server={"host": host, "api_keys": ["mine"]}))


def test_the_cli_refuses_to_serve_without_keys(tmp_path: Path, capsys) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("server:\n  api_keys: []\n")
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "server.api_keys is empty" in capsys.readouterr().err


def test_the_built_application_carries_no_clear_api_key(tmp_path: Path) -> None:
    """What Serve keeps in its control plane (deployment init args, the agent's bound args)."""
    import ray.cloudpickle

    from lancedb_ray.api.app import build_app

    app = build_app({"settings": {"server": {"api_keys": ["s3cret-api-key", DEV_KEY]},
                                  "storage": {"root": {"uri": str(tmp_path / "data")}}}})
    init_args = ray.cloudpickle.dumps(app._bound_deployment.init_args)
    assert b"s3cret-api-key" not in init_args and DEV_KEY.encode() not in init_args
    assert key_digest("s3cret-api-key").encode() in init_args


def test_secrets_from_the_environment_stay_out_of_the_built_application(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process has the same environment: a secret from it is read there, not passed along."""
    import ray.cloudpickle

    from lancedb_ray.api.app import build_app

    monkeypatch.setenv("LANCEDB_RAY_EVENTS__KAFKA__SASL_PASSWORD", "Endpoint=sb://kafka-secret/")
    monkeypatch.setenv("LANCEDB_RAY_STORAGE__DATABASES__ACME__SAS_TOKEN", "sv=sas-secret")
    overrides = {"storage": {"root": {"uri": str(tmp_path / "data")},
                             "databases": {"acme": {"account": "acct1", "container": "acme",
                                                    "credential": "sas_token"}}}}
    app = build_app({"settings": overrides})
    init_args = ray.cloudpickle.dumps(app._bound_deployment.init_args)
    assert b"kafka-secret" not in init_args and b"sas-secret" not in init_args
    plain = Settings.load(None, **overrides).to_plain()
    restored = Settings.from_plain(plain)  # as a replica or an actor does, in its own process
    assert restored.events.kafka.sasl_password.get_secret_value() == "Endpoint=sb://kafka-secret/"
    assert restored.storage.databases["acme"].sas_token.get_secret_value() == "sv=sas-secret"


def test_secrets_of_the_shared_settings_file_stay_out_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"root": {"uri": str(tmp_path / "data")},
                    "databases": {"acme": {"account": "acct1", "container": "acme",
                                           "credential": "account_key", "account_key": "ZmlsZS1rZXk="}}},
        "events": {"kafka": {"sasl_password": "file-kafka-secret"}},
    }))
    monkeypatch.setenv("LANCEDB_RAY_CONFIG", str(config))
    settings = Settings.load(None)
    plain = settings.to_plain()
    assert "ZmlsZS1rZXk=" not in repr(plain) and "file-kafka-secret" not in repr(plain)
    restored = Settings.from_plain(plain)
    assert restored.storage.databases["acme"].account_key.get_secret_value() == "ZmlsZS1rZXk="
    assert restored.events.kafka.sasl_password.get_secret_value() == "file-kafka-secret"
    assert restored.to_plain() == plain


def test_a_secret_given_in_code_only_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No process but this one could read it: Ray would have to carry it, so it is refused."""
    from lancedb_ray.api.app import build_app

    beta = {"account": "acct2", "container": "beta", "credential": "sas_token", "sas_token": "sv=given"}
    overrides = {"storage": {"root": {"uri": str(tmp_path / "data")}, "databases": {"beta": beta}}}
    with pytest.raises(SecretNotShared, match="LANCEDB_RAY_STORAGE__DATABASES__BETA__SAS_TOKEN") as refused:
        build_app({"settings": overrides})
    assert "sv=given" not in str(refused.value)
    monkeypatch.setenv("LANCEDB_RAY_STORAGE__DATABASES__BETA__SAS_TOKEN", "sv=other")
    with pytest.raises(SecretNotShared):  # the environment holds another value: still this one's alone
        Settings.load(None, **overrides).to_plain()
    monkeypatch.setenv("LANCEDB_RAY_STORAGE__DATABASES__BETA__SAS_TOKEN", "sv=given")
    assert "sv=given" not in repr(Settings.load(None, **overrides).to_plain())


def test_the_secrets_file_fills_only_the_sections_settings_have(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$LANCEDB_RAY_SECRETS``: a Kubernetes Secret mounted as a file, beside the settings."""
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump({
        "storage": {"databases": {"acme": {"sas_token": "sv=file"}, "other": {"account_key": "b3RoZXI="}}},
        "events": {"eventhub": {"connection_string": "Endpoint=sb://hub/;SharedAccessKey=eA=="}},
    }))
    monkeypatch.setenv("LANCEDB_RAY_SECRETS", str(secrets))
    acme = {"account": "acct1", "container": "acme", "credential": "sas_token"}
    settings = Settings.load(None, storage={"root": {"uri": str(tmp_path / "data")},
                                            "databases": {"acme": acme}})
    assert settings.storage.databases["acme"].sas_token.get_secret_value() == "sv=file"
    assert set(settings.storage.databases) == {"acme"}  # the file adds no database
    plain = settings.to_plain()
    assert "sv=file" not in repr(plain) and "SharedAccessKey" not in repr(plain)
    restored = Settings.from_plain(plain)
    assert restored.storage.databases["acme"].sas_token.get_secret_value() == "sv=file"
    assert restored.events.eventhub.connection_string.get_secret_value().startswith("Endpoint=sb://hub/")
    secrets.write_text(yaml.safe_dump({"storage": {"root": {"uri": "/elsewhere"}}}))
    with pytest.raises(ValueError, match="storage.root.uri is not a secret"):
        Settings.load(None)


def test_storage_options_carry_no_credential() -> None:
    """Options would travel to every process as they are: credentials have fields of their own."""
    from lancedb_ray.settings import StorageLocation

    StorageLocation(account="a", container="c", options={"timeout": "30s", "client_max_retries": "2"})
    for name in ("azure_storage_account_key", "ACCESS_KEY", "azure_storage_sas_token", "azure_client_secret"):
        with pytest.raises(ValidationError, match="is a credential"):
            StorageLocation(account="a", container="c", options={name: "c2VjcmV0"})
