"""Test stand-in for ae5-tools (see tests/fakes/README.md)."""


def load_ae5_user_secrets(secrets_path: str = "/var/run/secrets/user_credentials/", silent: bool = True) -> None:
    return None
