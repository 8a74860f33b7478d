from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
# Both /v1/sandboxes and /v1/sandboxes/ (the original used no trailing slash).
router.trailing_slash = "/?"
router.register("sandboxes", views.SandboxViewSet, basename="sandbox")
router.register("operations", views.OperationViewSet, basename="operation")
router.register("hosts", views.HostViewSet, basename="host")

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("vms", views.VMListView.as_view(), name="vms"),
    *router.urls,
]
