from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.trailing_slash = "/?"
# Diff, playbook and verify routes of a sandbox: /v1/sandboxes/{id}/diff and so on.
router.register("sandboxes", views.SandboxChangeViewSet, basename="sandbox-change")
router.register("playbooks", views.PlaybookViewSet, basename="playbook")
router.register("inventories", views.InventoryViewSet, basename="inventory")
router.register("playbook-runs", views.PlaybookRunViewSet, basename="playbook-run")

urlpatterns = router.urls
