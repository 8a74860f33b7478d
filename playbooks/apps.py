from django.apps import AppConfig


class PlaybooksConfig(AppConfig):
    """From a sandbox's change to production: diffs between snapshots, the playbooks generated
    from them, their verification by replay, inventories and approved runs."""

    name = "playbooks"
