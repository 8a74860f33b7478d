from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Agents' API keys and how a request proves whose it is."""

    name = "accounts"
